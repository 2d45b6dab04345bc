"""Which (runtime, precision) pairs a run measures, and the stage runners for each.

`plan_variants` decides from the config and the machine alone (cheap, testable): what is
measured, and for everything else a `Skip` with the reason. `build_variant` then exports,
builds and loads what one pair needs, just before it is timed.

    torch     eager PyTorch; fp32 anywhere, fp16/bf16 on CUDA
    ort       ONNX Runtime on the exported graphs: fp32 and fp16 exports (`--dtype`), and
              fp8 = the fp32 graphs with the DiT replaced by its FP8 Q/DQ graph
    tensorrt  engines built strongly typed from exports in their precision (needs CUDA and
              the `tensorrt` module); fp8 = the fp16 engines with an FP8 DiT engine whose
              export computes in fp16 outside the Q/DQ
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.models.cache import ArtifactCache, Entry
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import RUNTIME_BASE, Precision, compute_dtype
from cinema_trt.models.runner import Runner
from cinema_trt.models.stages import STAGE_NAMES as NAMES
from cinema_trt.models.stages import STAGES, stage

from .config import BenchConfig, default_cache_dir

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels

log = logging.getLogger(__name__)

# the FP8 variant quantizes the stages the sampler calls once per step (the DiT): their
# cost is `steps` times any other's (models/stage.py `Stage.per_step`)
FP8_STAGES = tuple(s.name for s in STAGES if s.per_step and Precision.FP8 in s.recipes)


@dataclass(frozen=True)
class Skip:
    runtime: str
    precision: str
    reason: str
    target: str = "all"  # "all", or "served" when only the served run is skipped


@dataclass(frozen=True)
class ServedSpec:
    """How a Triton repository serves the same stages (serving/repo.py, python backend)."""

    runtime: str  # the stage models' runtime: torch | ort | tensorrt
    artifacts: Path | None = None  # export folder (ort) or engine folder (tensorrt)
    export_dir: Path | None = None  # tensorrt: the ONNX folder with the MLLM glue


@dataclass
class Variant:
    runtime: str
    precision: str
    runners: dict[str, Runner]
    stages: tuple[str, ...]  # stages timed for this variant (fp8: only the swapped ones)
    stage_precisions: dict[str, str]
    setup: dict = field(default_factory=dict)  # exports/engines used, seconds spent
    served: ServedSpec | None = None  # None: cannot be served; `served_reason` says why
    served_reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


def _tensorrt_missing(device: str) -> str | None:
    if not device.startswith("cuda"):
        return "TensorRT needs a CUDA GPU; this run is on the CPU"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt module is not installed (pip install 'cinema-trt[gpu]')"
    return None


def _onnx_missing() -> str | None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'cinema-trt[onnx]')"
    return None


def _skip_reason(runtime: str, precision: str, device: str) -> str | None:
    if runtime == "torch":
        if precision == "fp8":
            return ("eager PyTorch has no FP8 inference path; FP8 runs as Q/DQ graphs "
                    "(ort, tensorrt)")
        if precision != "fp32" and device == "cpu":
            return f"{precision} eager is measured on CUDA only (CPU kernels emulate it)"
        return None
    if runtime == "ort":
        if precision == "bf16":
            return ("bf16 graphs run on TensorRT: ONNX Runtime's CPU provider has no bf16 "
                    "kernels")
        return _onnx_missing()
    return _onnx_missing() or _tensorrt_missing(device)


def plan_variants(bench: BenchConfig) -> tuple[list[tuple[str, str]], list[Skip]]:
    """([(runtime, precision) to measure], [skipped pairs with reasons]) in config order."""
    planned, skipped = [], []
    for runtime in bench.runtimes:
        for precision in bench.precisions:
            reason = _skip_reason(runtime, precision, bench.device)
            if reason is None:
                planned.append((runtime, precision))
            else:
                skipped.append(Skip(runtime, precision, reason))
    return planned, skipped


def _cache(bench: BenchConfig) -> ArtifactCache:
    return ArtifactCache(Path(bench.cache_dir or default_cache_dir()))


def _export(bench: BenchConfig, models: CinemaModels, dtype: str, fp8: bool = False
            ) -> Entry:
    """The export computing in `dtype` (`fp8`: the FP8 DiT's) from the artifact cache."""
    from cinema_trt.export.cached import cached_export

    return cached_export(_cache(bench), models.config, bench.weights, dtype=dtype, fp8=fp8,
                         stages=FP8_STAGES if fp8 else None, models=models, progress=False)


def _torch_variant(models, precision: str, bench: BenchConfig) -> Variant:
    from cinema_trt.models.factory import torch_runners

    # TorchRunner moves its module in place: other devices/dtypes get their own copy
    default = bench.device == "cpu" and precision == "fp32"
    source = models if default else copy.deepcopy(models)
    dtype = None if precision == "fp32" else lookup(compute_dtype(precision)).torch
    runners = torch_runners(source, bench.device, dtype)
    served = ServedSpec("torch") if precision == "fp32" else None
    return Variant("torch", precision, runners, NAMES, {s: precision for s in NAMES},
                   served=served, served_reason="served torch stage models load fp32 "
                   "weights and cast nothing (serving/stage_model.py)")


def overlay(folder: Path, base: Path, swaps: dict[str, Path]) -> Path:
    """`folder` with a symlink per stage folder of `base`, except `swaps` (stage -> its
    folder elsewhere): one folder a repository can take for a mixed-precision variant."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_symlink():
            old.unlink()
    for stage_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        target = swaps.get(stage_dir.name, stage_dir)
        (folder / stage_dir.name).symlink_to(target.resolve(), target_is_directory=True)
    return folder


def _ort_variant(models, precision: str, bench: BenchConfig) -> Variant:
    from cinema_trt.export.ort import OrtRunner, ort_runners

    # fp8 variants swap only FP8_STAGES into a base variant of the same runtime
    base = RUNTIME_BASE["ort"].value if precision == "fp8" else precision
    exports = [_export(bench, models, base)]
    base_dir = exports[0].path
    runners = ort_runners(base_dir, threads=bench.threads)
    stages: tuple[str, ...] = NAMES
    precisions, served = {s: base for s in NAMES}, base_dir
    if precision == "fp8":
        exports.append(_export(bench, models, base, fp8=True))
        fp8_dir = exports[1].path
        runners.update({s: OrtRunner(fp8_dir / s, threads=bench.threads) for s in FP8_STAGES})
        stages, precisions = FP8_STAGES, {**precisions, **{s: "fp8" for s in FP8_STAGES}}
        served = overlay(_cache(bench).root / "overlay" / fp8_dir.name, base_dir,
                         {s: fp8_dir / s for s in FP8_STAGES})
    setup = {"exports": [{"folder": str(e.path), "reused": e.reused} for e in exports],
             "providers": sorted({p for r in runners.values()
                                  for p in getattr(r, "providers", ())})}
    # the served ORT stage models take ORT's default thread count (stage_model.py passes
    # none): with --threads the server would not run what was measured in process
    same = bench.threads == 0
    return Variant("ort", precision, runners, stages, precisions, setup,
                   served=ServedSpec("ort", served) if same else None,
                   served_reason=f"served ORT stage models use ORT's default threads, not "
                                 f"threads={bench.threads}; rerun with --threads 0 to serve")


def _tensorrt_variant(models, precision: str, bench: BenchConfig) -> Variant:
    """Engines from exports in their own precision, so every build is strongly typed (the
    only kind TensorRT 11 builds)."""
    from cinema_trt.engines.config import BuildConfig, Precision
    from cinema_trt.engines.stages import cached_build
    from cinema_trt.engines.trt_runtime import TensorRTRunner, tensorrt_runners

    def build(export: Entry, precision: str, stages: tuple[str, ...] = ()) -> Path:
        return cached_build(_cache(bench), export, BuildConfig(Precision.parse(precision)),
                            stages=stages).path

    base = RUNTIME_BASE["tensorrt"].value if precision == "fp8" else precision
    export = _export(bench, models, base)
    engines = build(export, base)
    runners = tensorrt_runners(engines, export_dir=export.path, device=bench.device)
    stages: tuple[str, ...] = NAMES
    precisions = {s: base for s in NAMES}
    if precision == "fp8":
        fp8_engines = build(_export(bench, models, base, fp8=True), "fp8", FP8_STAGES)
        runners.update({s: TensorRTRunner(fp8_engines / s, bench.device,
                                          cuda_graph=stage(s).cuda_graph) for s in FP8_STAGES})
        stages, precisions = FP8_STAGES, {**precisions, **{s: "fp8" for s in FP8_STAGES}}
        engines = overlay(_cache(bench).root / "overlay" / fp8_engines.name, engines,
                          {s: fp8_engines / s for s in FP8_STAGES})
    return Variant("tensorrt", precision, runners, stages, precisions,
                   {"engines": str(engines), "base_precision": base},
                   served=ServedSpec("tensorrt", engines, export.path))


def build_variant(runtime: str, precision: str, models: CinemaModels,
                  bench: BenchConfig) -> Variant:
    """Export/build/load what (runtime, precision) needs; `setup["seconds"]` says how long."""
    start = time.perf_counter()
    builders = {"torch": _torch_variant, "ort": _ort_variant, "tensorrt": _tensorrt_variant}
    variant = builders[runtime](models, precision, bench)
    variant.setup["seconds"] = round(time.perf_counter() - start, 1)
    log.info("%s ready in %.1f s", variant.label, variant.setup["seconds"])
    return variant
