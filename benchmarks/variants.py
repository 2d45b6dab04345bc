"""Build one measured (runtime, precision) pair (benchmarks/plan.py decides which): export,
build and load what it needs from the artifact cache, just before it is timed.

An fp8 variant swaps the per-step stages (the DiT: models/stage.py `Stage.per_step`) for
their FP8 graphs on top of the runtime's base precision (models/backends.py
`Backend.base`); the folder a repository serves for it is a cache entry too: the base
entry's stage folders, the swapped ones from the FP8 entry, as links.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.models.backends import ORT, TENSORRT, TORCH
from cinema_trt.models.cache import ArtifactCache, Entry
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import Precision, compute_dtype
from cinema_trt.models.runner import Runner
from cinema_trt.models.stages import STAGE_NAMES, STAGES, stage

from .config import BenchConfig, default_cache_dir

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels

log = logging.getLogger(__name__)

# the stages an fp8 variant swaps: those the sampler calls once per step, whose cost is
# `steps` times any other's
FP8_STAGES = tuple(s.name for s in STAGES if s.per_step and Precision.FP8 in s.recipes)
FP8_GRAPHS = tuple(g.name for s in FP8_STAGES for g in stage(s).graphs)


@dataclass(frozen=True)
class ServedSpec:
    """How a Triton repository serves the same stages (serving/repo.py, python backend)."""

    runtime: str  # the stage models' runtime (models/backends.py RUNTIMES)
    artifacts: Path | None = None  # export folder (ort) or engine folder (tensorrt)
    export_dir: Path | None = None  # tensorrt: the ONNX folder with the split stages' glue


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

    def swap(self, runners: dict[str, Runner]) -> None:
        """Time the fp8 variant's FP8 stages only; the others stay the base's."""
        self.runners.update(runners)
        self.stages = FP8_STAGES
        self.stage_precisions.update({s: Precision.FP8.value for s in FP8_STAGES})


def _cache(bench: BenchConfig) -> ArtifactCache:
    return ArtifactCache(Path(bench.cache_dir or default_cache_dir()))


def _export(bench: BenchConfig, models: CinemaModels, dtype: str, fp8: bool = False
            ) -> Entry:
    """The export computing in `dtype` (`fp8`: the FP8 stages') from the artifact cache."""
    from cinema_trt.export.cached import cached_export

    return cached_export(_cache(bench), models.config, bench.weights, dtype=dtype, fp8=fp8,
                         stages=FP8_STAGES if fp8 else None, models=models, progress=False)


def _overlay(bench: BenchConfig, base: Entry, swaps: Entry) -> Path:
    """A cache entry holding a link per stage folder of `base`, the FP8 graphs' to `swaps`:
    one folder a repository can take for a mixed-precision variant."""
    def make(out: Path) -> None:
        out.mkdir()
        for folder in sorted(p for p in base.path.iterdir() if p.is_dir()):
            target = swaps.path / folder.name if folder.name in FP8_GRAPHS else folder
            (out / folder.name).symlink_to(target.resolve(), target_is_directory=True)

    def check(folder: Path) -> None:
        for link in folder.iterdir():
            if not link.exists():
                raise FileNotFoundError(f"{link} points at a cache entry that is gone")

    return _cache(bench).entry("overlay", {"base": base.key, "swaps": swaps.key}, make,
                               check).path


def _torch_variant(models, precision: str, bench: BenchConfig) -> Variant:
    from cinema_trt.models.factory import torch_runners

    # TorchRunner moves its module in place: other devices/dtypes get their own copy
    fp32 = Precision.parse(precision) is Precision.FP32
    source = models if bench.device == "cpu" and fp32 else copy.deepcopy(models)
    dtype = None if fp32 else lookup(compute_dtype(precision)).torch
    runners = torch_runners(source, bench.device, dtype)
    return Variant(TORCH, precision, runners, STAGE_NAMES,
                   {s: precision for s in STAGE_NAMES},
                   served=ServedSpec(TORCH) if fp32 else None,
                   served_reason="served torch stage models load fp32 weights and cast "
                                 "nothing (serving/stage_model.py)")


def _ort_variant(models, precision: str, bench: BenchConfig) -> Variant:
    from cinema_trt.export.ort import ort_runners

    fp8 = Precision.parse(precision) is Precision.FP8
    base = ORT.base.value if fp8 else precision
    exports = [_export(bench, models, base)]
    variant = Variant(ORT.name, precision, ort_runners(exports[0].path, threads=bench.threads),
                      STAGE_NAMES, {s: base for s in STAGE_NAMES})
    served = exports[0].path
    if fp8:
        exports.append(_export(bench, models, base, fp8=True))
        variant.swap(ort_runners(exports[1].path, threads=bench.threads))
        served = _overlay(bench, *exports)
    variant.setup = {"exports": [{"folder": str(e.path), "reused": e.reused} for e in exports],
                     "providers": sorted({p for r in variant.runners.values()
                                          for p in getattr(r, "providers", ())})}
    # the served ORT stage models take ORT's default thread count (stage_model.py passes
    # none): with --threads the server would not run what was measured in process
    if bench.threads == 0:
        variant.served = ServedSpec(ORT.name, served)
    variant.served_reason = (f"served ORT stage models use ORT's default threads, not "
                             f"threads={bench.threads}; rerun with --threads 0 to serve")
    return variant


def _tensorrt_variant(models, precision: str, bench: BenchConfig) -> Variant:
    """Engines from exports in their own precision, so every build is strongly typed (the
    only kind TensorRT 11 builds)."""
    from cinema_trt.engines.build import cached_build
    from cinema_trt.engines.config import BuildConfig
    from cinema_trt.engines.trt_runtime import tensorrt_runners

    def build(export: Entry, precision: str, stages: tuple[str, ...] = ()) -> Entry:
        return cached_build(_cache(bench), export, BuildConfig(Precision.parse(precision)),
                            stages=stages)

    fp8 = Precision.parse(precision) is Precision.FP8
    base = TENSORRT.base.value if fp8 else precision
    export = _export(bench, models, base)
    engines = build(export, base)
    variant = Variant(TENSORRT.name, precision, tensorrt_runners(
        engines.path, export_dir=export.path, device=bench.device), STAGE_NAMES,
        {s: base for s in STAGE_NAMES})
    served = engines.path
    if fp8:
        fp8_export = _export(bench, models, base, fp8=True)
        fp8_engines = build(fp8_export, precision, FP8_GRAPHS)
        variant.swap(tensorrt_runners(fp8_engines.path, export_dir=fp8_export.path,
                                      device=bench.device))
        served = _overlay(bench, engines, fp8_engines)
    variant.setup = {"engines": str(served), "base_precision": base}
    variant.served = ServedSpec(TENSORRT.name, served, export.path)
    return variant


BUILDERS = {TORCH: _torch_variant, ORT.name: _ort_variant, TENSORRT.name: _tensorrt_variant}


def build_variant(runtime: str, precision: str, models: CinemaModels,
                  bench: BenchConfig) -> Variant:
    """Export/build/load what (runtime, precision) needs; `setup["seconds"]` says how long."""
    start = time.perf_counter()
    variant = BUILDERS[runtime](models, precision, bench)
    variant.setup["seconds"] = round(time.perf_counter() - start, 1)
    log.info("%s ready in %.1f s", variant.label, variant.setup["seconds"])
    return variant
