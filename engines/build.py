"""Build every exported stage: what `cinema-trt build` runs, on any backend
(models/backends.py: the TensorRT ones through trt_build.py, ONNX Runtime's through
ort_build.py).

Reads the exporter's folder (`<onnx dir>/<stage>/model.onnx` + `manifest.json`, see
export/manifest.py), takes each stage's spec, config, precision and compute dtype from its
manifest, derives its profiles from one `profiles.yaml`, and builds `<out dir>/<stage>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cinema_trt.export.manifest import read_manifest, write_manifest
from cinema_trt.models.backends import TENSORRT, get_backend, resolve_targets
from cinema_trt.models.cache import ArtifactCache, Entry
from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.presets import Decoding

from .artifacts import check_backend_graph
from .config import BuildConfig, inspect_onnx
from .deps import require_backend, runtime_info
from .exported import ExportedStage, exported_stages, select_stages
from .shapes import load_shapes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildRequest:
    onnx_dir: Path
    out_dir: Path
    build_config: BuildConfig
    profile: Path | None = None  # profiles.yaml; None: the preset's defaults
    runtime: str = TENSORRT.name  # a backend of models/backends.py
    stages: tuple[str, ...] = ()  # empty: every exported stage
    # the decoder's calls (decode_chunk, decode_tiles) over the export's config: its
    # profile is one call's shape, and the engine's manifest records the config it is for
    decoding: Decoding = Decoding()

    def __post_init__(self):
        backend = get_backend(self.runtime)
        if self.build_config.timing_cache and not backend.timing_cache:
            kept = (" (its runtime cache of JIT-compiled kernels lives beside each plan)"
                    if backend.runtime_cache else "")
            raise ValueError(f"--timing-cache: {backend.display} has no timing cache{kept}; "
                             f"drop --timing-cache with --runtime {self.runtime}")
        if backend.builds_without_gpu:  # refused before anything is read (fp8, too old)
            resolve_targets(backend, self.build_config.precision, self.build_config.targets)


def build_stages(request: BuildRequest) -> dict[str, Path]:
    """Build (or reuse) one engine per selected stage; returns {stage: plan or model path}."""
    backend = get_backend(request.runtime)
    require_backend(backend.name)  # fail before reading gigabytes of ONNX
    chosen = [decoded(stage, request.decoding)
              for stage in select_stages(exported_stages(request.onnx_dir), request.stages)]
    if not backend.plugins:  # refuse before building any stage
        for stage in chosen:
            check_backend_graph(stage, inspect_onnx(stage.onnx_path), backend)
    shapes = load_shapes(request.profile, chosen[0].config)
    build: Callable[..., Path]
    if backend.plans:
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


def decoded(stage: ExportedStage, decoding: Decoding) -> ExportedStage:
    """`stage` with its config's decoding as chosen: the profiles follow it, and the built
    manifest (the export's record plus the build's) says which decoding the engine takes."""
    if not decoding.given:
        return stage
    config = decoding.apply(stage.config)
    return dataclasses.replace(stage, manifest=dataclasses.replace(
        stage.manifest, config=config.to_dict()), decoding=decoding)


def cached_build(cache: ArtifactCache, export: Entry, build_config: BuildConfig,
                 runtime: str = TENSORRT.name, stages: tuple[str, ...] = (),
                 profile: dict[str, Any] | None = None) -> Entry:
    """`build_stages` of a cached export into the artifact cache, or its entry reused while
    every plan hashes as its manifest says. Keyed on the export's key, the build config, the
    stages, the profile (profiles.yaml's mapping, kept in the entry; None: the preset's
    defaults) and the runtime's version and GPU."""
    from .manifest import built, verify_plan

    info = runtime_info(runtime, gpu=not get_backend(runtime).builds_without_gpu)
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
