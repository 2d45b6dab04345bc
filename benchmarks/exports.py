"""ONNX exports for the benchmark, kept in a cache folder and reused only when they match.

A cached stage is reused when its manifest says it was exported from exactly the weights
being benchmarked (state-dict hash), with the same architecture, precision, compute dtype and
exporter library versions, and its files still hash to what the manifest recorded.
Anything else is re-exported, stage by stage, so a changed DiT does not cost a new MLLM
export.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.export.manifest import (
    ExportExpectation,
    Precision,
    StaleExportError,
    check_export,
    exporter_versions,
    state_dict_sha256,
)
from cinema_trt.export.stages import EXPORT_STAGES, stage_exports
from cinema_trt.models.precision import compute_dtype, parse_dtype

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels

log = logging.getLogger(__name__)

# the FP8 variant quantizes the DiT only: it is the stage the sampler calls `steps` times,
# and the one the exporter's FP8 recipe was tuned for (export/fp8.py)
FP8_STAGES = ("dit",)


@dataclass(frozen=True)
class ExportCache:
    folder: Path
    reused: tuple[str, ...]
    exported: tuple[str, ...]
    seconds: float  # spent exporting (0 when everything was reused)


def stale_stages(models: CinemaModels, folder: Path, stages: tuple[str, ...], fp8: bool,
                 dtype: str = "fp32") -> dict[str, str]:
    """{stage: reason} for every stage of `stages` whose cached export must be redone.
    dtype: what the graphs compute in (export --dtype); with fp8, outside the Q/DQ."""
    versions = exporter_versions()
    modules = {s: e.module for s, e in stage_exports(models, stages).items()}
    compute = parse_dtype(dtype)
    stale = {}
    for stage in stages:
        precision = Precision.FP8 if fp8 and stage in FP8_STAGES else compute
        expect = ExportExpectation(models.config, precision, compute_dtype(compute),
                                   state_dict_sha256(modules[stage]), versions)
        try:
            check_export(folder / stage, expect)
        except StaleExportError as error:
            stale[stage] = error.reason
        except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
            stale[stage] = f"no usable manifest ({error})"
    return stale


def ensure_export(models: CinemaModels, folder: Path, fp8: bool = False,
                  dtype: str = "fp32") -> ExportCache:
    """Every stage in `dtype` (or the FP8_STAGES with FP8 Q/DQ when `fp8`) under `folder`,
    exported now unless a matching export is already there.

    The exporter builds the preset's seeded weights itself, so `models` must be
    `build_models(config)` with the default seed; the hashes check it afterwards.
    """
    from cinema_trt.export.driver import export_stages

    stages = FP8_STAGES if fp8 else EXPORT_STAGES
    kind = f"fp8 ({dtype})" if fp8 else dtype
    stale = stale_stages(models, folder, stages, fp8, dtype)
    for stage, reason in stale.items():
        log.info("%s: exporting %s to %s (cache: %s)", kind, stage, folder, reason)
    start = time.perf_counter()
    if stale:
        export_stages(models.config, folder, stages=tuple(stale), fp8=fp8, dtype=dtype,
                      progress=False)
        still = stale_stages(models, folder, tuple(stale), fp8, dtype)
        if still:
            raise RuntimeError(f"fresh exports in {folder} do not match the benchmarked "
                               f"models: {still}; the exporter built different weights")
    reused = tuple(s for s in stages if s not in stale)
    if reused:
        log.info("reusing cached exports %s from %s", list(reused), folder)
    return ExportCache(folder, reused, tuple(stale), time.perf_counter() - start)
