"""`cached_export`: `export_stages` into the one artifact cache (models/cache.py), for the
demo, the benchmarks and the memory plan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.models.cache import ArtifactCache, Entry, folder_sha256
from cinema_trt.models.precision import Precision, compute_dtype, parse_dtype
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.stages import graph, resolve_graphs

from .driver import export_stages
from .manifest import ExportExpectation, check_export, exporter_versions, state_dict_sha256

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels


def cached_export(cache: ArtifactCache, config: CinemaConfig,
                  weights: str | os.PathLike | None = None, dtype: str | Precision = "fp32",
                  fp8: bool = False, stages: tuple[str, ...] | None = None,
                  models: CinemaModels | None = None, progress: bool = True) -> Entry:
    """`export_stages` into the artifact cache (models/cache.py), or its entry reused when
    `check_export` accepts every stage with the full expectation (with `models`, the weights
    in memory, each stage's state-dict hash too). weights: a save_models folder, hashed into
    the key; None: the config's seeded weights. The key holds the whole config, not only the
    architecture: FP8 calibration runs the sampler's default request, and a build without a
    profile reads its shapes from the sampler defaults in the export manifest's config."""
    names, compute = resolve_graphs(stages), parse_dtype(dtype)
    versions = exporter_versions()
    inputs = {"weights": folder_sha256(weights) if weights else "seeded",
              "config": config.to_dict(), "dtype": compute.value, "fp8": fp8,
              "stages": names, "versions": versions}
    sources = {n: state_dict_sha256(graph(n).module(models)) for n in names} if models else {}

    def check(folder: Path) -> None:
        for stage in names:
            precision = Precision.FP8 if fp8 and Precision.FP8 in graph(stage).recipes \
                else compute
            check_export(folder / stage, ExportExpectation(
                config, precision, compute_dtype(compute), sources.get(stage), versions))

    return cache.entry("onnx", inputs, lambda out: export_stages(
        config, out, names, weights, fp8=fp8, progress=progress, dtype=compute), check)
