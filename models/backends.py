"""The build backends as data, one object each, read by every module that builds, loads or
serves an artifact (no `if rtx:` or `if runtime == "ort":` branches elsewhere), and the GPU
architecture rules they are checked by (the one place that spells "sm89").

- `tensorrt`: TensorRT for data-center GPUs (H100/H200/B200). Kernels are timed and
  compiled on the GPU that builds the engine, so the engine targets that GPU's compute
  capability only, and building needs it.
- `tensorrt-rtx`: TensorRT for RTX (`pip install tensorrt-rtx-cu12`, module
  `tensorrt_rtx`). It compiles ahead of time for a list of compute capabilities on any
  machine, CPU-only included, and JIT-compiles the final kernels on the GPU at first run
  (kept in a runtime cache). It has no weak typing, no timing cache and no Python
  plugins, and no SM90 target.
- `ort`: ONNX Runtime. Its build saves the graph optimized for the CPU provider; it runs
  each graph in the graph's own types (the precision policy says which it takes).

Hardware limits apply to the GPU backends (models/precision.py: FP8 tensor cores exist
from SM89, bf16 from SM80). TensorRT-RTX refuses to compile an FP8 graph for SM80 ("the
model contains HW-specific datatypes: fp8_e4m3"), so the targets are checked against the
precision before anything is read. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from .precision import Precision, policy


@dataclass(frozen=True)
class Backend:
    """What one backend can do, as the build, the runners and serving need it."""

    name: str  # `cinema-trt build --runtime` value and the manifest's build.runtime
    module: str  # the Python module
    display: str  # for messages
    install: str  # how to get the module
    # builds TensorRT plans for NVIDIA GPUs (TensorRTRunner runs them); False: ONNX graphs
    # optimized for the CPU (OrtRunner runs them)
    plans: bool
    # compute capabilities it compiles for ahead of time; () with plans: only the GPU
    # that builds the engine (which must then be present)
    targets: tuple[str, ...]
    # first major version without weakly typed builds; 0: always strongly typed; None: no
    # typing mode to choose (ONNX Runtime runs a graph's own types; its build checks that)
    weak_typing_until: int | None
    timing_cache: bool  # builder timing cache (no-op on TensorRT-RTX: a warning says so)
    runtime_cache: bool  # IRuntimeConfig runtime cache of JIT-compiled kernels
    # first version whose `<module>.plugin` has aot_impl (the Triton attention plugins);
    # "": none (TensorRT-RTX ships no plugin module; its versions are never compared with
    # TensorRT's, where 1.7 < 10.8 would misreport it as an old TensorRT)
    plugins_since: str
    # the Triton Inference Server backend that loads its artifacts (serving/triton_config.py)
    triton_backend: str
    # the export it runs fastest, and the base of its fp8 graphs (demo, benchmarks): ONNX
    # Runtime's CPU provider runs fp16 through casts, no faster than fp32
    base: Precision
    wheel: str = ""  # the PyPI distribution of `module` (a serving image installs it)

    @property
    def builds_without_gpu(self) -> bool:
        return not self.plans or bool(self.targets)

    @property
    def plugins(self) -> bool:
        return bool(self.plugins_since)

    def weak_typing(self, version: str) -> bool:
        """Whether this version still has weakly typed builds (BuilderFlag.FP16/BF16)."""
        from packaging.version import Version

        return self.weak_typing_until is None or Version(version).major < self.weak_typing_until

    def targets_for(self, precision: Precision) -> tuple[str, ...]:
        """The ahead-of-time targets whose hardware runs `precision`."""
        return tuple(t for t in self.targets if sm_number(t) >= policy(precision).min_sm)


TENSORRT = Backend(
    name="tensorrt", module="tensorrt", display="TensorRT",
    install="install the GPU extra in its own environment (`pip install 'cinema-trt[gpu]'`, "
            "which pulls the `tensorrt` wheels from PyPI; needs an NVIDIA driver and CUDA "
            "12), or run inside an NGC container that ships it (nvcr.io/nvidia/pytorch:"
            "<yy.mm>-py3 or nvcr.io/nvidia/tensorrt:<yy.mm>-py3). To run on CPU instead, "
            "use `cinema-trt build --runtime ort`",
    plans=True, targets=(), weak_typing_until=11, timing_cache=True, runtime_cache=False,
    plugins_since="10.8", triton_backend="tensorrt", base=Precision.FP16,
    wheel="tensorrt-cu12")
TENSORRT_RTX = Backend(
    name="tensorrt-rtx", module="tensorrt_rtx", display="TensorRT-RTX",
    install="pip install tensorrt-rtx-cu12 (builds on any machine; running needs an RTX / "
            "workstation GPU of a target architecture)",
    plans=True, targets=("sm75", "sm80", "sm86", "sm89", "sm120", "sm121"),
    weak_typing_until=0, timing_cache=False, runtime_cache=True, plugins_since="",
    triton_backend="python", base=Precision.FP16, wheel="tensorrt-rtx-cu12")
ORT = Backend(
    name="ort", module="onnxruntime", display="ONNX Runtime",
    install="`pip install 'cinema-trt[onnx]'` (CPU) or `pip install 'cinema-trt[gpu]'` (CUDA)",
    plans=False, targets=(), weak_typing_until=None, timing_cache=False,
    runtime_cache=False, plugins_since="", triton_backend="onnxruntime", base=Precision.FP32)

BACKENDS = {b.name: b for b in (TENSORRT, TENSORRT_RTX, ORT)}
# what runs a stage (generate, repo, bench --runtime): eager PyTorch, an ONNX Runtime graph,
# or a TensorRT plan of either TensorRT backend (its manifest says which)
TORCH = "torch"  # no backend: the PyTorch modules themselves
RUNTIMES = (TORCH, ORT.name, TENSORRT.name)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"runtime={name!r} is not a backend; expected one of "
                         f"{list(BACKENDS)}") from None


def backend_of_module(module: str) -> Backend:
    """The backend whose Python module is `module` ("tensorrt_rtx" -> TENSORRT_RTX)."""
    return next(b for b in BACKENDS.values() if b.module == module)


def sm_number(target: str) -> int:
    """"sm89" -> 89."""
    return int(target[2:])


def sm(number: int) -> str:
    """89 -> "sm89"."""
    return f"sm{number}"


# TMA (tensor memory accelerator) loads exist from Hopper on
TMA_SM = 90


def sm_of(compute_capability: str | tuple[int, int]) -> int:
    """A GPU's compute capability as TensorRT or torch report it ("8.9", (8, 9)) -> 89."""
    major, minor = (compute_capability.split(".") if isinstance(compute_capability, str)
                    else compute_capability)
    return 10 * int(major) + int(minor)


def sm_name(compute_capability: str | tuple[int, int]) -> str:
    """A GPU's compute capability ("8.9" or (8, 9)) -> "sm89"."""
    return sm(sm_of(compute_capability))


def supports(compute_capability: str | tuple[int, int], precision: Precision) -> bool:
    """Whether a GPU of this compute capability has the hardware `precision` needs."""
    return sm_of(compute_capability) >= policy(precision).min_sm


def minimum_targets() -> str:
    """"fp8 needs sm89+, bf16 sm80+" from the precision policy (for help texts)."""
    rules = [(p.precision.value, sm(p.min_sm)) for p in sorted(
        (policy(p) for p in Precision), key=lambda q: -q.min_sm) if p.min_sm]
    return ", ".join(f"{p} needs {s}+" if i == 0 else f"{p} {s}+"
                     for i, (p, s) in enumerate(rules))


def parse_targets(text: str | None) -> tuple[str, ...]:
    """`--targets sm89,sm120` (also "8.9", "SM89", "89") -> ("sm89", "sm120")."""
    if not text:
        return ()
    out = []
    for item in text.replace(" ", "").split(","):
        raw = item.lower().removeprefix("sm").replace(".", "").replace("_", "")
        if not raw.isdigit():
            raise ValueError(f"--targets: {item!r} is not a compute capability; write them "
                             "like sm89,sm120")
        out.append(sm(int(raw)))
    return tuple(dict.fromkeys(out))


def resolve_targets(backend: Backend, precision: Precision, requested: tuple[str, ...],
                    build_gpu: str | None = None) -> tuple[str, ...]:
    """The compute capabilities the engine is built for, checked against the precision.

    TensorRT-RTX: `requested`, or every target the precision allows. TensorRT: the GPU
    that builds it (`build_gpu`, "sm90"), the only one its tuned kernels are known to run on.
    ONNX Runtime: none (CPU models).
    """
    precision = Precision.parse(precision)
    if not backend.plans:
        if requested:
            raise ValueError(f"--targets names GPU architectures for the TensorRT backends; "
                             f"drop it with --runtime {backend.name}")
        return ()
    allowed = backend.targets_for(precision)
    minimum = policy(precision).min_sm
    if not backend.builds_without_gpu:
        if build_gpu is None:
            raise ValueError(f"{backend.display} builds on the GPU it targets, and none was "
                             "given; build on that GPU, or use --runtime tensorrt-rtx")
        if requested and requested != (build_gpu,):
            raise ValueError(f"--targets {','.join(requested)}: {backend.display} builds for "
                             f"the GPU it runs on ({build_gpu}) only; drop --targets, or use "
                             "--runtime tensorrt-rtx to build for other GPUs")
        if sm_number(build_gpu) < minimum:
            raise ValueError(f"precision={precision.value} needs {sm(minimum)} or newer, and "
                             f"this GPU is {build_gpu}; build fp16 here")
        return (build_gpu,)
    unknown = [t for t in requested if t not in backend.targets]
    if unknown:
        raise ValueError(f"--targets {','.join(unknown)}: {backend.display} compiles for "
                         f"{','.join(backend.targets)} only (no sm90: H100/H200 use "
                         "--runtime tensorrt)")
    too_old = [t for t in requested if t not in allowed]
    if too_old:
        raise ValueError(f"precision={precision.value} needs {sm(minimum)} or newer, so it "
                         f"cannot target {','.join(too_old)}; use --targets "
                         f"{','.join(allowed)}, or --precision fp16 for {','.join(too_old)}")
    return requested or allowed
