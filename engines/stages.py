"""Build every exported stage: what `cinema-trt build` runs.

Reads the exporter's folder (`<onnx dir>/<stage>/model.onnx` + `manifest.json`, see
export/manifest.py), takes each stage's spec, config, precision and compute dtype from its
manifest, derives its profiles from one `profiles.yaml`, and builds `<out dir>/<stage>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cinema_trt.export.manifest import MODEL_FILE, Manifest, read_manifest, write_manifest
from cinema_trt.models.cache import ArtifactCache, Entry
from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec

from .backends import BACKENDS, resolve_targets
from .config import BuildConfig
from .shapes import load_shapes

log = logging.getLogger(__name__)

RUNTIMES = (*BACKENDS, "ort")  # the TensorRT backends (backends.py) and ONNX Runtime


@dataclass(frozen=True)
class ExportedStage:
    """An export folder and its manifest: what a build is made from (the manifest's spec,
    config, precision and compute dtype are believed, not re-derived from the graph)."""

    folder: Path
    manifest: Manifest

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ExportedStage:
        """A complete export folder; its graph is not hashed here (the build's cache key
        hashes it, and a graph edited after export builds as it is)."""
        from cinema_trt.export.manifest import check_export

        return cls(Path(folder), check_export(folder, graph_hash=False))

    @property
    def name(self) -> str:
        return self.manifest.stage

    @property
    def onnx_path(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def config(self) -> CinemaConfig:
        return CinemaConfig.from_dict(self.manifest.config)

    @property
    def spec(self) -> StageSpec:  # the exported tensors
        return self.manifest.stage_spec()


@dataclass(frozen=True)
class BuildRequest:
    onnx_dir: Path
    out_dir: Path
    build_config: BuildConfig
    profile: Path | None = None  # profiles.yaml; None: the preset's defaults
    runtime: str = "tensorrt"  # "tensorrt" | "tensorrt-rtx" | "ort"
    stages: tuple[str, ...] = ()  # empty: every exported stage

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r} must be one of {list(RUNTIMES)}")
        if self.build_config.targets and self.runtime not in BACKENDS:
            raise ValueError(f"--targets names GPU architectures for the TensorRT backends; "
                             f"drop it with --runtime {self.runtime}")
        backend = BACKENDS.get(self.runtime)
        if backend is not None and not backend.timing_cache and self.build_config.timing_cache:
            raise ValueError(f"--timing-cache: {backend.display} has no timing cache (its "
                             f"runtime cache of JIT-compiled kernels lives beside each plan); "
                             f"drop --timing-cache with --runtime {self.runtime}")


def exported_stages(onnx_dir: str | os.PathLike) -> dict[str, ExportedStage]:
    """Every complete stage export under `onnx_dir`, by the stage name in its manifest."""
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise FileNotFoundError(f"ONNX folder {onnx_dir} does not exist; run "
                                f"`cinema-trt export --out {onnx_dir}` first")
    stages = {stage.name: stage for stage in
              (ExportedStage.read(p.parent) for p in sorted(onnx_dir.glob("*/manifest.json")))}
    if not stages:
        raise FileNotFoundError(f"no exported stages (<stage>/{MODEL_FILE} + manifest.json) "
                                f"under {onnx_dir}")
    return stages


def select_stages(found: dict[str, ExportedStage], wanted: tuple[str, ...]
                  ) -> list[ExportedStage]:
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise ValueError(f"stages {unknown} were not exported; available: {sorted(found)}")
    chosen = [found[s] for s in (wanted or sorted(found))]
    architectures = {stage.config.to_json() for stage in chosen}
    if len(architectures) > 1:
        presets = sorted({s.config.name for s in chosen})
        raise ValueError(f"the exported stages come from different configs ({presets}); "
                         "export every stage from one model, then build")
    return chosen


def build_stages(request: BuildRequest) -> dict[str, Path]:
    """Build (or reuse) one engine per selected stage; returns {stage: plan or model path}."""
    backend = BACKENDS.get(request.runtime)
    if backend is not None:  # fail before reading gigabytes of ONNX
        from .deps import require_backend

        require_backend(backend.name)
        if backend.builds_without_gpu:  # fp8 for sm80 and the like
            resolve_targets(backend, request.build_config.precision,
                            request.build_config.targets)
    chosen = select_stages(exported_stages(request.onnx_dir), request.stages)
    config = chosen[0].config
    if backend is not None and not backend.plugins:  # refuse before building any stage
        from .artifacts import check_backend_graph
        from .config import inspect_onnx

        for stage in chosen:
            check_backend_graph(stage, inspect_onnx(stage.onnx_path), backend.name)
    shapes = load_shapes(request.profile, config)
    build: Callable[..., Path]
    if backend is not None:
        from .trt_build import build_engine

        build = functools.partial(build_engine, backend=backend.name)
    else:
        from .ort_build import build_ort_model

        build = build_ort_model
    built = {}
    for stage in chosen:
        log.info("building %s (%s, %s)", stage.name, request.runtime,
                 request.build_config.precision.value)
        built[stage.name] = build(stage, Path(request.out_dir) / stage.name, shapes,
                                  request.build_config)
    return built


def cached_build(cache: ArtifactCache, export: Entry, build_config: BuildConfig,
                 runtime: str = "tensorrt", stages: tuple[str, ...] = (),
                 profile: dict[str, Any] | None = None) -> Entry:
    """`build_stages` of a cached export into the artifact cache, or its entry reused while
    every plan hashes as its manifest says. Keyed on the export's key, the build config, the
    stages, the profile (profiles.yaml's mapping, kept in the entry; None: the preset's
    defaults) and the runtime's version and GPU."""
    from .deps import onnxruntime_runtime_info, tensorrt_runtime_info
    from .manifest import built, verify_plan

    backend = BACKENDS.get(runtime)
    info = onnxruntime_runtime_info() if backend is None else tensorrt_runtime_info(
        runtime, gpu=not backend.builds_without_gpu)
    inputs = {"onnx": export.key, "build": build_config.cache_fields(), "stages": stages,
              "profile": profile, "runtime": asdict(info)}
    names = stages or tuple(exported_stages(export.path))

    def make(out: Path) -> None:
        import yaml

        out.mkdir(parents=True)
        path = atomic_write(out / "profiles.yaml", yaml.safe_dump(profile)) if profile else None
        build_stages(BuildRequest(export.path, out, build_config, path, runtime, stages))
        # the rebuild commands name the entry, not this staging folder renamed into it
        final = cache.path("engines", inputs)
        for stage in names:
            manifest = read_manifest(out / stage)
            record = built(manifest)
            command = record.rebuild_command.replace(str(out), str(final))
            write_manifest(dataclasses.replace(manifest, build=dataclasses.replace(
                record, rebuild_command=command)), out / stage)

    def check(folder: Path) -> None:
        for stage in names:
            verify_plan(folder / stage, read_manifest(folder / stage))

    return cache.entry("engines", inputs, make, check)
