"""`run_demo`: the whole deployment path on one machine, from nothing to a served video.

    1. weights   random preset weights (seed 0), save_models           <workdir>/weights/
    2. onnx      export_stages: every graph, checked against PyTorch     <workdir>/onnx/
    3. engines   TensorRT plans when tensorrt imports and CUDA exists    <workdir>/engines/
    4. models    the Triton repository: Python-backend stages on ORT or TensorRT, and the
                 `cinema` orchestrator                                   <workdir>/models/
    5. serve     tritonserver on free loopback ports; one request over gRPC with streamed
                 progress; the MP4; per-stage latency from Triton's statistics; stop.

Steps 1-4 each write `<workdir>/<step>.stamp.json` holding the sha256 of what produced the
folder (config, seed, the upstream step's key, library versions, paths). A step is reused
only when that key matches and its folder is complete (weights config, export manifests
with their graph hashes, plan manifests, model configs); otherwise it is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.precision import RUNTIME_BASE
from cinema_trt.serving.latency import StageLatency, settled_snapshot, stage_latency

log = logging.getLogger(__name__)

WEIGHTS_SEED = 0
DEFAULT_PROMPT = "A blue square and a green triangle dance together in a sunny park."
RUNTIME_CHOICES = ("auto", "ort", "tensorrt")


@dataclass(frozen=True)
class DemoOptions:
    """What `cinema-trt demo` takes; sizes left None take the preset's sampler defaults."""

    workdir: Path = Path("cinema-demo")
    preset: str = "tiny"
    output: Path | None = None  # the MP4; None: <workdir>/demo.mp4
    prompt: str = DEFAULT_PROMPT
    steps: int | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0  # noise seed of the request (the weights always use WEIGHTS_SEED)
    runtime: str = "auto"  # auto: tensorrt when usable, else ort (ONNX Runtime, CPU)
    keep_server: bool = False  # serve until Ctrl-C after generating
    progress: bool = True
    startup_timeout: float = 300.0  # seconds for the server to load every stage

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
class DemoResult:
    output: Path
    runtime: str  # "ort" | "tensorrt"
    request_seconds: float  # wall time of the gRPC request, seen by the client
    latency: tuple[StageLatency, ...]  # per stage model, from Triton's statistics
    reused: dict[str, bool] = field(default_factory=dict)  # step -> taken from the workdir
    grpc: str = ""  # the server's endpoint while it ran


# --- cached steps -------------------------------------------------------------------------


def step_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _read_stamp(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("key")
    except (OSError, ValueError):
        return None


def cached_step(workdir: Path, name: str, inputs: dict[str, Any],
                complete: Callable[[Path], bool], make: Callable[[Path], Any],
                clear: bool = True) -> tuple[Path, str, bool]:
    """Reuse `<workdir>/<name>/` when its stamp's key matches `inputs` and `complete(folder)`
    holds; else (clear it and) `make(folder)`, then stamp it. Returns (folder, key, reused).

    `clear=False` keeps the old folder for `make`, for builders with a cache of their own.
    """
    folder, stamp = workdir / name, workdir / f"{name}.stamp.json"
    key = step_key({"step": name, **inputs})
    found = _read_stamp(stamp)
    if found == key and complete(folder):
        log.info("%s: reusing %s", name, folder)
        return folder, key, True
    reason = "no stamp" if found is None else "inputs changed" if found != key \
        else "folder incomplete"
    log.info("%s: building %s (%s)", name, folder, reason)
    stamp.unlink(missing_ok=True)  # until the new stamp lands, the step is not done
    if clear and folder.exists():
        shutil.rmtree(folder)
    make(folder)
    if not complete(folder):
        raise RuntimeError(f"step {name} finished but {folder} is incomplete")
    atomic_write(stamp, json.dumps({"key": key, "inputs": inputs}, indent=2, sort_keys=True,
                                   default=str))
    return folder, key, False


def _versions(*dists: str) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    return found


def _weights_complete(config) -> Callable[[Path], bool]:
    from cinema_trt.models.factory import CONFIG_FILE, STAGE_FILES, read_weights_config

    def complete(folder: Path) -> bool:
        files = [folder / CONFIG_FILE, *(folder / f for f in STAGE_FILES.values())]
        if not (all(f.is_file() for f in files) and (folder / "mllm").is_dir()):
            return False
        try:
            return read_weights_config(folder).to_dict() == config.to_dict()
        except (ValueError, KeyError, TypeError):  # a damaged config: rebuild
            return False
    return complete


def _export_complete(config) -> Callable[[Path], bool]:
    from cinema_trt.export.manifest import ExportExpectation, check_export
    from cinema_trt.export.stages import EXPORT_STAGES

    def complete(folder: Path) -> bool:
        try:
            for stage in EXPORT_STAGES:  # manifests present, graph hashes as recorded
                check_export(folder / stage, ExportExpectation(config=config))
        except (FileNotFoundError, ValueError) as error:
            log.info("onnx: %s", error)
            return False
        return True
    return complete


def _has_files(*relative: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / r).is_file() for r in relative)


# --- the steps ----------------------------------------------------------------------------


def tensorrt_unusable() -> str | None:
    """Why the TensorRT path cannot run here, or None when it can."""
    import torch

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def pick_runtime(requested: str) -> str:
    reason = tensorrt_unusable()
    if requested == "tensorrt" and reason is not None:
        raise ValueError(f"runtime tensorrt is not usable here: {reason}; use runtime ort "
                         "(or auto), or install 'cinema-trt[gpu]' on a CUDA machine")
    if requested != "auto":
        return requested
    if reason is None:
        return "tensorrt"
    log.info("TensorRT not used (%s): the stages run their ONNX graphs on ONNX Runtime, CPU",
             reason)
    return "ort"


def _weights_step(options: DemoOptions, config):
    from cinema_trt.models.factory import build_models, save_models

    inputs = {"config": config.to_dict(), "seed": WEIGHTS_SEED,
              "versions": _versions("cinema-trt", "torch", "transformers")}
    return cached_step(options.workdir, "weights", inputs, _weights_complete(config),
                       lambda out: save_models(build_models(config, seed=WEIGHTS_SEED), out))


def _export_step(options: DemoOptions, config, weights: Path, weights_key: str,
                 dtype: str):
    from cinema_trt.export.driver import export_stages
    from cinema_trt.export.manifest import exporter_versions
    from cinema_trt.export.stages import EXPORT_STAGES

    inputs = {"weights": weights_key, "stages": EXPORT_STAGES, "precision": dtype,
              "versions": exporter_versions()}
    return cached_step(options.workdir, "onnx", inputs, _export_complete(config),
                       lambda out: export_stages(config, out, weights=weights, dtype=dtype,
                                                 progress=options.progress))


def _engine_step(options: DemoOptions, config, onnx: Path, onnx_key: str, request):
    """TensorRT plans for exactly the demo's video size (1..max references)."""
    import tensorrt
    import torch
    import yaml

    from cinema_trt.engines.config import BuildConfig
    from cinema_trt.engines.stages import BuildRequest, build_stages
    from cinema_trt.export.stages import EXPORT_STAGES

    max_refs = min(config.mllm.max_refs, config.dit.max_refs)
    profile = {"preset": config.name, "batch": 1, "frames": request.frames,
               "height": request.height, "width": request.width, "cfg": True,
               "refs": {"min": 1, "opt": len(request.refs), "max": max_refs}}
    profile_path = options.workdir / "profiles.yaml"
    atomic_write(profile_path, yaml.safe_dump(profile))
    # BuildConfig() is fp16, the precision of the RUNTIME_BASE["tensorrt"] graphs
    inputs = {"onnx": onnx_key, "profile": profile, "tensorrt": tensorrt.__version__,
              "gpu": torch.cuda.get_device_name(0), "build": BuildConfig().cache_fields()}
    manifests = [f"{stage}/manifest.json" for stage in EXPORT_STAGES]
    # clear=False: the builder keeps its own honest cache (ONNX bytes, TensorRT, GPU)
    return cached_step(options.workdir, "engines", inputs, _has_files(*manifests),
                       lambda out: build_stages(BuildRequest(onnx, out, BuildConfig(),
                                                             profile=profile_path)),
                       clear=False)


def _repository_step(options: DemoOptions, runtime: str, weights: Path, onnx: Path,
                     engines: Path | None, upstream: list[str]):
    from cinema_trt.models.specs import STAGES
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.triton_config import Placement

    placement = Placement("gpu", 1, (0,)) if runtime == "tensorrt" else Placement()
    repo_options = RepositoryOptions(runtime=runtime, stage_placement=placement)
    artifacts = engines if runtime == "tensorrt" else onnx
    assert artifacts is not None, "the engines step ran when the runtime is tensorrt"
    # the repository links to the other steps' folders by absolute path: key on them too
    inputs = {"upstream": upstream, "options": repr(repo_options),
              "paths": [str(p.resolve()) for p in (weights, artifacts, onnx)]}
    configs = [f"{model}/config.pbtxt" for model in (*STAGES, "cinema")]
    return cached_step(options.workdir, "models", inputs, _has_files(*configs),
                       lambda out: build_repository(None, out, weights, artifacts,
                                                    repo_options, export_dir=onnx))


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
    """Send the request with streamed progress and write the MP4; returns (wall seconds,
    the statistics snapshot taken just before)."""
    from tqdm import tqdm

    from cinema_trt.serving.client import CinemaClient, ClientOptions

    client = CinemaClient(url, ClientOptions(timeout=None))  # Ctrl-C cancels instead
    before = settled_snapshot(url)
    with tqdm(total=request.steps, desc="denoising (server)", unit="step",
              disable=not options.progress) as bar:
        start = time.perf_counter()
        result = client.stream(request.prompt, ref_paths, lambda i, n: bar.update(i - bar.n),
                               outputs=("mp4",), frames=request.frames, height=request.height,
                               width=request.width, steps=request.steps,
                               guidance=request.guidance, seed=request.seed, fps=request.fps)
        seconds = time.perf_counter() - start
    output = options.output_path
    assert result.mp4 is not None, "the client checks the requested outputs arrived"
    atomic_write(output, result.mp4)
    log.info("wrote %s (%d frames, %dx%d) in %.2f s", output, request.frames, request.width,
             request.height, seconds)
    return seconds, before


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


@dataclass(frozen=True)
class DemoArtifacts:
    runtime: str  # "ort" | "tensorrt"
    weights: Path
    onnx: Path
    engines: Path | None  # runtime tensorrt only
    repository: Path
    reused: dict[str, bool]  # step -> taken from the work dir


def build_artifacts(options: DemoOptions) -> DemoArtifacts:
    """Steps 1-4: weights, ONNX, [engines], repository; each reused when still valid."""
    from cinema_trt.models.presets import get_preset

    config = get_preset(options.preset)
    request, _ = demo_request(options, config)  # a bad size fails before any work
    runtime = pick_runtime(options.runtime)
    options.workdir.mkdir(parents=True, exist_ok=True)
    weights, weights_key, weights_reused = _weights_step(options, config)
    onnx, onnx_key, onnx_reused = _export_step(options, config, weights, weights_key,
                                               RUNTIME_BASE[runtime].value)
    reused = {"weights": weights_reused, "onnx": onnx_reused}
    engines, upstream = None, [weights_key, onnx_key]
    if runtime == "tensorrt":
        engines, engines_key, reused["engines"] = _engine_step(options, config, onnx,
                                                               onnx_key, request)
        upstream.append(engines_key)
    repo, _, reused["models"] = _repository_step(options, runtime, weights, onnx, engines,
                                                 upstream)
    return DemoArtifacts(runtime, weights, onnx, engines, repo, reused)


def run_demo(options: DemoOptions = DemoOptions(),
             report: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """Weights -> ONNX -> [TensorRT] -> repository -> server -> one video + latency table.

    `report(result)` is called while the server still runs (with `keep_server`, before
    waiting for Ctrl-C). The server is stopped on return, on errors and on Ctrl-C/SIGTERM.
    """
    from cinema_trt.models.presets import get_preset
    from cinema_trt.serving.server import ServerConfig, TritonServer

    request, ref_paths = demo_request(options, get_preset(options.preset))
    if options.output is not None and not options.output_path.parent.is_dir():
        raise FileNotFoundError(f"output folder {options.output_path.parent} does not exist")
    artifacts = build_artifacts(options)
    server_config = ServerConfig(artifacts.repository, startup_timeout=options.startup_timeout)
    with _sigterm_as_interrupt(), TritonServer(server_config) as server:
        url = server.endpoints.grpc
        seconds, before = _generate(url, options, request, ref_paths)
        result = DemoResult(options.output_path, artifacts.runtime, seconds,
                            stage_latency(before, settled_snapshot(url)), artifacts.reused,
                            url)
        if report is not None:
            report(result)
        if options.keep_server:
            _serve_until_interrupted(server)
    return result
