"""The TensorRT backends as data: one description each, read by every module that builds,
loads or serves an engine (no `if rtx:` branches elsewhere).

- `tensorrt`: TensorRT for data-center GPUs (H100/H200/B200). Kernels are timed and
  compiled on the GPU that builds the engine, so the engine targets that GPU's compute
  capability only, and building needs it.
- `tensorrt-rtx`: TensorRT for RTX (`pip install tensorrt-rtx-cu12`, module
  `tensorrt_rtx`). It compiles ahead of time for a list of compute capabilities on any
  machine, CPU-only included, and JIT-compiles the final kernels on the GPU at first run
  (kept in a runtime cache). It has no weak typing, no timing cache and no Python
  plugins, and no SM90 target.

Hardware limits apply to both (models/precision.py: FP8 tensor cores exist from SM89,
bf16 from SM80). TensorRT-RTX refuses to compile an FP8 graph for SM80 ("the model
contains HW-specific datatypes: fp8_e4m3"), so the targets are checked against the
precision before anything is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from cinema_trt.models.precision import Precision, policy


@dataclass(frozen=True)
class Backend:
    """What one TensorRT flavour can do, as the build, the runner and serving need it."""

    name: str  # `cinema-trt build --runtime` value and the manifest's "runtime"
    module: str  # the Python module
    display: str  # for messages
    install: str  # how to get the module
    # compute capabilities it compiles for ahead of time, as "sm89"; () = only the GPU
    # that builds the engine (which must then be present)
    targets: tuple[str, ...]
    # first major version without weakly typed builds; 0: always strongly typed
    weak_typing_until: int
    timing_cache: bool  # builder timing cache (no-op on TensorRT-RTX: a warning says so)
    runtime_cache: bool  # IRuntimeConfig runtime cache of JIT-compiled kernels
    plugins: bool  # `<module>.plugin` (the Triton attention plugins) exists
    triton_backend: str  # the Triton Inference Server backend that can load its plans
    wheel: str = ""  # the PyPI distribution of `module` (a serving image installs it)

    @property
    def builds_without_gpu(self) -> bool:
        return bool(self.targets)

    def weak_typing(self, version: str) -> bool:
        """Whether this version still has weakly typed builds (BuilderFlag.FP16/BF16)."""
        from packaging.version import Version

        return Version(version).major < self.weak_typing_until

    def targets_for(self, precision: Precision) -> tuple[str, ...]:
        """The ahead-of-time targets whose hardware runs `precision`."""
        return tuple(t for t in self.targets if sm_number(t) >= policy(precision).min_sm)


TENSORRT = Backend(
    name="tensorrt", module="tensorrt", display="TensorRT",
    install="pip install 'cinema-trt[gpu]' (the `tensorrt` wheels; needs an NVIDIA driver and "
            "CUDA 12), or an NGC container that ships it (nvcr.io/nvidia/pytorch:<yy.mm>-py3)",
    targets=(), weak_typing_until=11, timing_cache=True, runtime_cache=False, plugins=True,
    triton_backend="tensorrt_plan", wheel="tensorrt-cu12")
TENSORRT_RTX = Backend(
    name="tensorrt-rtx", module="tensorrt_rtx", display="TensorRT-RTX",
    install="pip install tensorrt-rtx-cu12 (builds on any machine; running needs an RTX / "
            "workstation GPU of a target architecture)",
    targets=("sm75", "sm80", "sm86", "sm89", "sm120", "sm121"), weak_typing_until=0,
    timing_cache=False, runtime_cache=True, plugins=False, triton_backend="python",
    wheel="tensorrt-rtx-cu12")

BACKENDS = {b.name: b for b in (TENSORRT, TENSORRT_RTX)}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"runtime={name!r} is not a TensorRT backend; expected one of "
                         f"{list(BACKENDS)}") from None


def sm_number(target: str) -> int:
    """"sm89" -> 89."""
    return int(target[2:])


def sm_name(compute_capability: str) -> str:
    """A GPU's compute capability as torch/TensorRT report it ("8.9") -> "sm89"."""
    major, minor = compute_capability.split(".")
    return f"sm{int(major)}{int(minor)}"


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
        out.append(f"sm{int(raw)}")
    return tuple(dict.fromkeys(out))


def resolve_targets(backend: Backend, precision: Precision, requested: tuple[str, ...],
                    build_gpu: str | None = None) -> tuple[str, ...]:
    """The compute capabilities the engine is built for, checked against the precision.

    TensorRT-RTX: `requested`, or every target the precision allows. TensorRT: the GPU
    that builds it (`build_gpu`, "sm90"), the only one its tuned kernels are known to run on.
    """
    precision = Precision.parse(precision)
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
            raise ValueError(f"precision={precision.value} needs sm{minimum} or newer, and "
                             f"this GPU is {build_gpu}; build fp16 here")
        return (build_gpu,)
    unknown = [t for t in requested if t not in backend.targets]
    if unknown:
        raise ValueError(f"--targets {','.join(unknown)}: {backend.display} compiles for "
                         f"{','.join(backend.targets)} only (no sm90: H100/H200 use "
                         "--runtime tensorrt)")
    too_old = [t for t in requested if t not in allowed]
    if too_old:
        raise ValueError(f"precision={precision.value} needs sm{minimum} or newer, so it "
                         f"cannot target {','.join(too_old)}; use --targets "
                         f"{','.join(allowed)}, or --precision fp16 for {','.join(too_old)}")
    return requested or allowed


# --- the NGC Triton container that serves a backend's plans -------------------------------


@dataclass(frozen=True)
class TritonRelease:
    """One monthly NGC release of `nvcr.io/nvidia/tritonserver:<release>-py3`: the server
    version and the TensorRT inside, which alone can load a `tensorrt` plan of that
    version (a plan loads only in the TensorRT major.minor.patch that built it)."""

    release: str  # the NGC tag, yy.mm
    triton: str  # the server version
    tensorrt: str  # TensorRT in the container

    @property
    def image(self) -> str:
        return f"nvcr.io/nvidia/tritonserver:{self.release}-py3"

    @property
    def tensorrt_container(self) -> str:
        """The container of the same release to build `tensorrt` plans in."""
        return f"nvcr.io/nvidia/tensorrt:{self.release}-py3"


# From NVIDIA's container release notes (Triton Inference Server Release yy.mm, "Contents of
# the Triton Inference Server container"). Add a row for each new release.
TRITON_RELEASES = tuple(TritonRelease(*row) for row in (
    ("24.05", "2.46.0", "10.0.1.6"), ("24.06", "2.47.0", "10.1.0.27"),
    ("24.07", "2.48.0", "10.2.0.19"), ("24.08", "2.49.0", "10.3.0.26"),
    ("24.09", "2.50.0", "10.4.0.26"), ("24.10", "2.51.0", "10.5.0.18"),
    ("24.11", "2.52.0", "10.6.0.26"), ("24.12", "2.53.0", "10.7.0.23"),
    ("25.01", "2.54.0", "10.8.0.43"), ("25.02", "2.55.0", "10.8.0.43"),
    ("25.03", "2.56.0", "10.9.0.34"), ("25.04", "2.57.0", "10.9.0.34"),
    ("25.05", "2.58.0", "10.10.0.31"), ("25.06", "2.59.0", "10.11.0.33"),
))
# the server every serving test ran on (nvidia-pytriton 0.7.0 bundles Triton 2.51): the
# release chosen when no `tensorrt` plan decides it
TESTED_TRITON = "2.51.0"


def _release_of(tensorrt_version: str) -> tuple[int, ...]:
    from packaging.version import Version

    return Version(tensorrt_version).release[:3]  # build numbers differ between packagings


def triton_release(tensorrt_version: str | None = None,
                   release: str | None = None) -> TritonRelease:
    """The release to serve with. `tensorrt_version`: the TensorRT that built the
    repository's `tensorrt` plans, which the release must contain (the newest such, unless
    `release` names one); without plans, `release` or the tested server's release."""
    by_tag = {r.release: r for r in TRITON_RELEASES}
    if release is not None and release not in by_tag:
        raise ValueError(f"Triton release {release!r} is not in engines/backends.py "
                         f"TRITON_RELEASES ({', '.join(by_tag)}); add its row from NVIDIA's "
                         "release notes, or choose a listed one")
    if tensorrt_version is None:
        tested = next(r for r in TRITON_RELEASES if r.triton == TESTED_TRITON)
        return by_tag[release] if release else tested
    matching = [r for r in TRITON_RELEASES
                if _release_of(r.tensorrt) == _release_of(tensorrt_version)]
    if not matching:
        known = ", ".join(dict.fromkeys(r.tensorrt for r in TRITON_RELEASES))
        raise ValueError(
            f"the plans were built by TensorRT {tensorrt_version}, which no Triton release "
            f"in TRITON_RELEASES contains ({known}): rebuild them in the TensorRT container "
            f"of the release you will serve with (e.g. {TRITON_RELEASES[-1].tensorrt_container})")
    if release is not None and by_tag[release] not in matching:
        raise ValueError(
            f"Triton {release} contains TensorRT {by_tag[release].tensorrt}, but the plans "
            f"were built by TensorRT {tensorrt_version}: serve them with "
            f"{' or '.join(r.release for r in matching)}, or rebuild them in "
            f"{by_tag[release].tensorrt_container}")
    return by_tag[release] if release else matching[-1]
