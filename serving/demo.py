"""`run_demo`: the whole deployment path on one machine, from nothing to a served video.

    1. weights   random preset weights (seed 0), save_models; or the --weights folder
    2. onnx      export_stages: every graph, checked against PyTorch
    3. engines   TensorRT plans when tensorrt imports and CUDA exists
    4. models    the Triton repository: Python-backend stages on ORT or TensorRT, and the
                 `cinema` orchestrator
    5. serve     tritonserver on free loopback ports; one request over gRPC with streamed
                 progress; the MP4; per-stage latency from Triton's statistics; stop.

Steps 1-4 are entries of the artifact cache (models/cache.py) rooted at the work dir,
`<workdir>/<step>/<key>/`, keyed on what made them (the config and seed, the weights' hash,
the precision, the upstream keys, library versions, the GPU). An entry is reused only when
its key matches and it is still valid (the export checked by `check_export`, graph hashes
included; every plan against its manifest); otherwise it is made again, beside the old ones.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cinema_trt.models.backends import ORT, TENSORRT, get_backend
from cinema_trt.models.cache import ArtifactCache, Entry
from cinema_trt.serving.latency import StageLatency, settled_snapshot, stage_latency
from cinema_trt.serving.protocol import PARAMETERS
from cinema_trt.serving.server import ServerConfig

log = logging.getLogger(__name__)

WEIGHTS_SEED = 0
DEFAULT_PROMPT = "A blue square and a green triangle dance together in a sunny park."
RUNTIME_CHOICES = ("auto", ORT.name, TENSORRT.name)


@dataclass(frozen=True)
class DemoOptions:
    """What `cinema-trt demo` takes; sizes left None take the config's sampler defaults."""

    workdir: Path = Path("cinema-demo")
    preset: str | None = None  # None: the weights folder's own config, else DEFAULT_PRESET
    weights: Path | None = None  # a save_models folder; None: random preset weights
    output: Path | None = None  # the MP4; None: <workdir>/demo.mp4
    prompt: str = DEFAULT_PROMPT
    steps: int | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0  # noise seed of the request (random weights always use WEIGHTS_SEED)
    runtime: str = "auto"  # auto: tensorrt when usable, else ort (ONNX Runtime, CPU)
    keep_server: bool = False  # serve until Ctrl-C after generating
    progress: bool = True
    startup_timeout: float = ServerConfig.startup_timeout  # the server's one default

    def __post_init__(self):
        object.__setattr__(self, "workdir", Path(self.workdir))
        if self.runtime not in RUNTIME_CHOICES:
            raise ValueError(f"runtime={self.runtime!r} must be one of {list(RUNTIME_CHOICES)}")
        if self.output is not None and Path(self.output).suffix.lower() != ".mp4":
            raise ValueError(f"output={self.output} must end in .mp4 (the server encodes H.264)")

    @property
    def output_path(self) -> Path:
        return Path(self.output) if self.output is not None else self.workdir / "demo.mp4"


@dataclass(frozen=True)
class DemoArtifacts:
    runtime: str  # ORT's or TensorRT's name (models/backends.py)
    weights: Path
    onnx: Path
    engines: Path | None  # runtime tensorrt only
    repository: Path
    reused: dict[str, bool]  # step -> taken from the cache (no "weights" with --weights)


@dataclass(frozen=True)
class DemoResult:
    output: Path
    artifacts: DemoArtifacts
    request_seconds: float  # wall time of the gRPC request, seen by the client
    latency: tuple[StageLatency, ...]  # per stage model, from Triton's statistics
    grpc: str = ""  # the server's endpoint while it ran
    # from sending the request until its first decoded frames arrived (streamed frames)
    first_frame_seconds: float = 0.0


# --- the steps ----------------------------------------------------------------------------


def pick_runtime(requested: str) -> str:
    from cinema_trt.engines.deps import unusable

    reason = unusable(TENSORRT.name)  # why TensorRT cannot run here, or None
    if requested == TENSORRT.name and reason is not None:
        raise ValueError(f"runtime {TENSORRT.name} is not usable here: {reason}; use runtime "
                         f"{ORT.name} (or auto), or install 'cinema-trt[gpu]' on a CUDA machine")
    if requested != "auto":
        return requested
    if reason is None:
        return TENSORRT.name
    log.info("TensorRT not used (%s): the stages run their ONNX graphs on ONNX Runtime, CPU",
             reason)
    return ORT.name


def _weights(cache: ArtifactCache, config) -> Entry:
    from cinema_trt.models.factory import build_models, read_weights_config, save_models

    def check(folder: Path) -> None:  # save_models writes the config last
        if read_weights_config(folder).to_dict() != config.to_dict():
            raise ValueError(f"{folder} holds weights of another config")

    inputs = {"config": config.to_dict(), "seed": WEIGHTS_SEED,
              "versions": [metadata.version(d) for d in ("cinema-trt", "torch", "transformers")]}
    return cache.entry("weights", inputs, lambda out: save_models(
        build_models(config, seed=WEIGHTS_SEED), out), check)


def _engines(cache: ArtifactCache, config, onnx: Entry, request) -> Entry:
    """TensorRT plans for exactly the demo's video size (1..max references)."""
    from cinema_trt.engines.build import cached_build
    from cinema_trt.engines.config import BuildConfig

    max_refs = min(config.mllm.max_refs, config.dit.max_refs)
    profile = {"preset": config.name, "batch": 1, "frames": request.frames,
               "height": request.height, "width": request.width, "cfg": True,
               "refs": {"min": 1, "opt": len(request.refs), "max": max_refs}}
    return cached_build(cache, onnx, BuildConfig(TENSORRT.base), profile=profile)


def _repository(cache: ArtifactCache, runtime: str, weights: Path, onnx: Entry,
                artifacts: Entry) -> Entry:
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.triton_config import Placement

    placement = Placement("gpu", 1, (0,)) if get_backend(runtime).plans else Placement()
    repo_options = RepositoryOptions(runtime=runtime, stage_placement=placement)
    # the repository links to the other entries by absolute path: key on the paths too (the
    # export's key holds the weights' hash)
    inputs = {"upstream": [onnx.key, artifacts.key], "options": repr(repo_options),
              "paths": [str(p.resolve()) for p in (weights, artifacts.path, onnx.path)]}
    # build_repository renames a whole repository into place: its orchestrator's config
    # marks it complete (what it links to is checked as the upstream entries)
    return cache.entry("models", inputs, lambda out: build_repository(
        None, out, weights, artifacts.path, repo_options, export_dir=onnx.path),
        lambda folder: (folder / "cinema" / "config.pbtxt").stat())


# --- serve, generate, measure -------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill <pid>` unwinds like Ctrl-C, so the server is stopped, not orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _generate(url: str, options: DemoOptions, request, ref_paths):
    """Send the request with streamed progress and streamed frames, writing the MP4 chunk
    by chunk as the frames arrive; returns (wall seconds, seconds to the first frames, the
    statistics snapshot taken just before)."""
    from tqdm import tqdm

    from cinema_trt.models.media import VideoWriter
    from cinema_trt.serving.client import CinemaClient, ClientOptions

    client = CinemaClient(url, ClientOptions(timeout=None))  # Ctrl-C cancels instead
    before = settled_snapshot(url)
    output = options.output_path
    first: list[float] = []
    with VideoWriter(output, request.fps) as writer, \
            tqdm(total=request.steps, desc="denoising (server)", unit="step",
                 disable=not options.progress) as bar:
        def on_frames(chunk) -> None:
            if not first:
                first.append(time.perf_counter() - start)
            writer.write(chunk.frames)

        start = time.perf_counter()
        client.stream(request.prompt, ref_paths, lambda i, n: bar.update(i - bar.n),
                      outputs=(), on_frames=on_frames,
                      **{name: getattr(request, name) for name in PARAMETERS})
        seconds = time.perf_counter() - start
        writer.close()  # the client checked that every frame arrived
    log.info("wrote %s (%d frames, %dx%d) in %.2f s, the first frames after %.2f s", output,
             request.frames, request.width, request.height, seconds, first[0])
    return seconds, first[0], before


def _serve_until_interrupted(server) -> None:
    from cinema_trt.serving.server import ServerError

    log.info("serving on grpc %s until Ctrl-C (cinema-trt generate --url %s ...)",
             server.endpoints.grpc, server.endpoints.grpc)
    try:
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        log.info("Ctrl-C: stopping tritonserver")
        return
    raise ServerError(f"tritonserver exited on its own with code {server.returncode}; last "
                      f"log lines:\n{server.log_tail}")


def demo_request(options: DemoOptions, config):
    """The validated request and its reference paths (sample references 1-2)."""
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import GenerationRequest

    ref_paths = sample_references()[:2]
    request = GenerationRequest.with_defaults(
        config, options.prompt, tuple(load_image(p) for p in ref_paths), frames=options.frames,
        height=options.height, width=options.width, steps=options.steps, seed=options.seed)
    request.validate(config)
    return request, ref_paths


def build_artifacts(options: DemoOptions, config, request) -> DemoArtifacts:
    """Steps 1-4: weights, ONNX, [engines], repository; each reused when still valid."""
    from cinema_trt.export.cached import cached_export

    runtime = pick_runtime(options.runtime)
    cache = ArtifactCache(options.workdir)
    reused = {}
    weights = options.weights
    if weights is None:
        made = _weights(cache, config)
        weights, reused["weights"] = made.path, made.reused
    onnx = cached_export(cache, config, weights, dtype=get_backend(runtime).base.value,
                         progress=options.progress)
    reused["onnx"] = onnx.reused
    engines = _engines(cache, config, onnx, request) if get_backend(runtime).plans else None
    if engines is not None:
        reused["engines"] = engines.reused
    repo = _repository(cache, runtime, Path(weights), onnx, engines or onnx)
    reused["models"] = repo.reused
    return DemoArtifacts(runtime, Path(weights), onnx.path,
                         engines.path if engines else None, repo.path, reused)


def run_demo(options: DemoOptions = DemoOptions(),
             report: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """Weights -> ONNX -> [TensorRT] -> repository -> server -> one video + latency table.

    `report(result)` is called while the server still runs (with `keep_server`, before
    waiting for Ctrl-C). The server is stopped on return, on errors and on Ctrl-C/SIGTERM.
    """
    from cinema_trt.models.factory import command_config
    from cinema_trt.serving.server import TritonServer

    config = command_config(options.preset, options.weights)
    request, ref_paths = demo_request(options, config)  # a bad size fails before any work
    if options.output is not None and not options.output_path.parent.is_dir():
        raise FileNotFoundError(f"output folder {options.output_path.parent} does not exist")
    artifacts = build_artifacts(options, config, request)
    server_config = ServerConfig(artifacts.repository, startup_timeout=options.startup_timeout)
    with _sigterm_as_interrupt(), TritonServer(server_config) as server:
        url = server.endpoints.grpc
        seconds, first_frame, before = _generate(url, options, request, ref_paths)
        result = DemoResult(options.output_path, artifacts, seconds,
                            stage_latency(before, settled_snapshot(url)), url, first_frame)
        if report is not None:
            report(result)
        if options.keep_server:
            _serve_until_interrupted(server)
    return result
