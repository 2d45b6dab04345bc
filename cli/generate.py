"""`cinema-trt generate`: prompt + reference images -> video file, in process or, with
`--url`, on a running Triton server (`cinema-trt serve` / `cinema-trt demo --keep-server`)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from cinema_trt.models.backends import ORT, TORCH
from cinema_trt.models.presets import Decoding

from .decoding import add_decoding, decoding
from .options import defaults, from_args

if TYPE_CHECKING:
    from cinema_trt.models.pipeline import CinemaPipeline
    from cinema_trt.models.presets import CinemaConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str
    refs: tuple[Path, ...]
    output: Path
    preset: str | None = None  # None: the weights folder's own config, else DEFAULT_PRESET
    weights: Path | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    fps: int | None = None
    device: str = "cpu"
    attention: str = "sdpa"
    runtime: str = TORCH  # torch | ort (models/backends.py)
    onnx: Path | None = None  # export folder for runtime ort
    progress: bool = True
    url: str | None = None  # HOST:PORT of a Triton server's gRPC endpoint; None: in process
    # --url: seconds without a message from the server before giving up (None: derived
    # from the video's size, serving/client.py no_progress_timeout)
    progress_timeout: float | None = None
    # --url: times a generation whose replica failed mid-way is sent again (behind a
    # balancer another replica runs it; the seed makes it the same video)
    resubmit: int = 0
    # how the VAE decoder runs in process (--decode-chunk, --decode-tile): over the config's
    decoding: Decoding = Decoding()


def build_pipeline(options: GenerateOptions, config: CinemaConfig) -> CinemaPipeline:
    """The pipeline on the requested runtime; ORT runs the graphs `cinema-trt export` wrote."""
    from cinema_trt.models.factory import pipeline_processor, torch_pipeline
    from cinema_trt.models.pipeline import CinemaPipeline

    if options.runtime == TORCH:
        return torch_pipeline(config, options.weights, device=options.device)
    if options.runtime != ORT.name:
        raise ValueError(f"runtime={options.runtime!r}: choose {TORCH} or {ORT.name}")
    if options.onnx is None:
        raise ValueError("runtime ort needs --onnx DIR (written by `cinema-trt export`)")
    from cinema_trt.export.ort import ort_runners

    return CinemaPipeline(config, ort_runners(options.onnx),
                          pipeline_processor(config, options.weights))


def _check_remote_options(options: GenerateOptions) -> None:
    """Flags that choose the local model mean nothing to a server: refuse, don't ignore."""
    local_only = {"--weights": options.weights is not None, "--onnx": options.onnx is not None,
                  "--runtime": options.runtime != TORCH, "--device": options.device != "cpu",
                  "--attention": options.attention != "sdpa",
                  "--decode-chunk/--decode-tile/--decode-overlap": options.decoding.given}
    given = [flag for flag, set_ in local_only.items() if set_]
    if given:
        raise ValueError(f"{given} choose the in-process model; with --url the server's "
                         "repository decides it. Drop them, or drop --url")


def generate_remote(options: GenerateOptions) -> Path:
    """Send the request to the server at `options.url` and write the video as it comes.

    The server streams the frames as its VAE decodes them (`stream_frames`), and each chunk
    is written at once: an .mp4 is encoded here chunk by chunk (the same encoder as the
    server's one-shot MP4), a PNG folder gains files, a .gif is written at the end. The
    server validates the request against its preset; Ctrl-C cancels the request on the
    server; a failed request leaves no partial .mp4.
    """
    from cinema_trt.models.media import VideoWriter, check_video_path
    from cinema_trt.serving.client import CinemaClient, ClientOptions
    from cinema_trt.serving.protocol import FrameChunk

    _check_remote_options(options)
    check_video_path(options.output)
    if not options.output.parent.exists():
        raise FileNotFoundError(f"output folder {options.output.parent} does not exist")
    for ref in options.refs:
        if not ref.is_file():
            raise FileNotFoundError(f"reference image not found: {ref}")
    # no deadline: a large preset may denoise for many minutes; Ctrl-C cancels, and a dead
    # server is noticed by the no-progress bound
    if options.url is None:
        raise ValueError("a served generate needs --url HOST:PORT")
    client = CinemaClient(options.url, ClientOptions(timeout=None, resubmit=options.resubmit,
                                                     progress_timeout=options.progress_timeout))
    writer: list[VideoWriter] = []  # opened by the first chunk: it names the server's fps

    def write(chunk: FrameChunk) -> None:
        if not writer:
            writer.append(VideoWriter(options.output, chunk.fps))
        writer[0].write(chunk.frames)

    done = False
    try:
        with tqdm(total=options.steps, desc="denoising", unit="step",
                  disable=not options.progress) as bar:
            def progress(step: int, total: int) -> None:
                bar.total = total
                bar.update(step - bar.n)

            client.stream(options.prompt, options.refs, progress, outputs=(), on_frames=write,
                          frames=options.frames, height=options.height, width=options.width,
                          steps=options.steps, guidance=options.guidance, seed=options.seed,
                          fps=options.fps)
        path = writer[0].close()  # the client checked that every frame arrived
        done = True
        return path
    finally:  # an error or Ctrl-C: no half-written .mp4 under the output name
        if writer and not done:
            writer[0].abort()


def generate_video(options: GenerateOptions) -> Path:
    """Run the pipeline (in process, or on the server at `options.url`) and write the
    video; returns the written path."""
    from cinema_trt.models.factory import command_config
    from cinema_trt.models.media import load_image, write_video
    from cinema_trt.models.pipeline import GenerationRequest

    if options.url:
        return generate_remote(options)
    # validate cheap things (inputs, output folder) before building any model
    refs = tuple(load_image(p) for p in options.refs)
    if not options.output.parent.exists():
        raise FileNotFoundError(f"output folder {options.output.parent} does not exist")
    config = options.decoding.apply(command_config(options.preset, options.weights)
                                    ).with_attention_backend(options.attention)
    request = GenerationRequest.with_defaults(
        config, options.prompt, refs, frames=options.frames, height=options.height,
        width=options.width, steps=options.steps, guidance=options.guidance,
        seed=options.seed, fps=options.fps)
    request.validate(config)

    pipeline = build_pipeline(options, config)
    with tqdm(total=request.steps, desc="denoising", unit="step",
              disable=not options.progress) as bar:
        video = pipeline.generate(request, progress=lambda step, total: bar.update(1))
    log.info("stage seconds: %s",
             ", ".join(f"{k}={v:.3f}" for k, v in pipeline.last_timings.items()))
    return write_video(options.output, video, request.fps)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("generate", help="generate a video from a prompt and references")
    p.add_argument("--prompt", required=True)
    p.add_argument("--ref", action="append", required=True, type=Path, dest="refs",
                   help="reference image, one per subject (repeat 1..4 times)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help=".mp4, .gif, or a folder name for PNG frames")
    p.add_argument("--preset", help="tiny | small | cinema (default: the --weights folder's "
                                    "own architecture, else tiny); with --weights, must match")
    p.add_argument("--weights", type=Path, help="weights folder from save_models (its "
                                                "cinema_config.json is the architecture)")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--device")
    p.add_argument("--attention",
                   help="sdpa | triton | triton_unfused | triton_int8")
    p.add_argument("--runtime", choices=(TORCH, ORT.name))
    p.add_argument("--onnx", type=Path,
                   help="for --runtime ort: an export folder or a `build --runtime ort` folder")
    p.add_argument("--url", help="HOST:PORT of a running server's gRPC endpoint (cinema-trt "
                                 "serve): generate there instead of in this process")
    p.add_argument("--progress-timeout", type=float,
                   help="with --url: seconds without progress from the server before giving "
                        "up (default: derived from the video's size)")
    p.add_argument("--resubmit", type=int,
                   help="with --url: times a generation whose replica failed mid-way is sent "
                        "again, to another replica behind a balancer (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decoding(p)
    p.set_defaults(func=run, **defaults(GenerateOptions))


def run(args: argparse.Namespace) -> int:
    options = from_args(GenerateOptions, args, refs=tuple(args.refs), progress=not args.quiet,
                        decoding=decoding(args))
    if options.url is None:
        print(generate_video(options))
        return 0
    from cinema_trt.serving.client import CinemaRequestError, ReplicaFailed, ServerStalled

    try:
        print(generate_video(options))
    except ReplicaFailed as error:  # the server failed, not the request
        log.error("%s", error)
        return 1
    except CinemaRequestError as error:  # the server's message names the bad input
        log.error("the server rejected the request: %s", error)
        return 2
    except (ConnectionError, ServerStalled) as error:
        log.error("%s", error)
        return 1
    return 0
