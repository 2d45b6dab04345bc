"""What every engine build does around the runtime call, shared by TensorRT and ONNX Runtime:
check the graph against its export manifest, resolve the build config (from the manifest's
compute dtype) and profiles, key the cache, write the manifest (the export's + `build`).

Everything here runs without TensorRT, so it is unit tested on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cinema_trt.export.manifest import BuildRecord, Manifest, write_manifest
from cinema_trt.models.backends import Backend, get_backend, resolve_targets, sm_name
from cinema_trt.models.specs import StageSpec

from .config import BuildConfig, OnnxGraphInfo, inspect_onnx, resolve_build_config
from .exported import ExportedStage
from .manifest import (
    RuntimeInfo,
    artifact_sha256,
    cached_engine,
    engine_key,
    onnx_sha256,
    profiles_to_json,
    rebuild_command,
)
from .shapes import DeploymentShapes, Profile, profiles_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageBuild:
    """One stage's build, fully decided before the runtime is called."""

    export: Manifest  # the export's record: the built folder's manifest repeats it
    onnx_path: Path
    out_dir: Path
    graph: OnnxGraphInfo
    build_config: BuildConfig  # resolved: strongly_typed from the manifest and graph
    profiles: dict[str, Profile]  # only the inputs the ONNX graph has
    onnx_digest: str
    runtime: RuntimeInfo
    cache_key: str
    rebuild_command: str

    @property
    def stage(self) -> str:
        return self.export.stage


def prepare_build(stage: ExportedStage, out_dir: str | os.PathLike,
                  shapes: DeploymentShapes, build_config: BuildConfig,
                  runtime: RuntimeInfo) -> StageBuild:
    """Check the graph against its export manifest and decide everything the build needs."""
    onnx_path, out_dir, export = stage.onnx_path, Path(out_dir), stage.manifest
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found: run `cinema-trt export` first")
    graph, backend = inspect_onnx(onnx_path), get_backend(runtime.runtime)
    check_graph_io(stage.spec, graph, onnx_path)
    check_backend_graph(stage, graph, backend)
    build_gpu = sm_name(runtime.compute_capability) if runtime.compute_capability else None
    build_config = dataclasses.replace(build_config, targets=resolve_targets(
        backend, build_config.precision, build_config.targets, build_gpu))
    resolved = resolve_build_config(build_config, graph, export.compute_dtype,
                                    backend.weak_typing(runtime.version))
    profiles = {name: value
                for name, value in profiles_for(stage.spec, shapes, stage.config).items()
                if name in graph.inputs}
    digest = onnx_sha256(onnx_path)
    key = engine_key(export, digest, resolved, profiles, runtime)
    # the exporter's layout is <onnx dir>/<stage>/model.onnx -> rebuild from <onnx dir>
    command = rebuild_command(stage.folder.parent, out_dir.parent, resolved, (stage.name,),
                              shapes.source or None, runtime.runtime, stage.decoding)
    return StageBuild(export, onnx_path, out_dir, graph, resolved, profiles, digest, runtime,
                      key, command)


def check_backend_graph(stage: ExportedStage, graph: OnnxGraphInfo, backend: Backend) -> None:
    """Refuse plugin nodes where the backend has no plugins (TensorRT-RTX, ONNX Runtime),
    naming the export command that avoids them."""
    if backend.plugins or not graph.trt_plugins:
        return
    export = stage.manifest
    fused = "; its own fused attention replaces them" if backend.plans else ""
    raise ValueError(
        f"{stage.onnx_path} has TensorRT plugin nodes {sorted(graph.trt_plugins)} (exported "
        f"with --attention-plugin), and {backend.display} has no Python plugins, so it cannot "
        f"run them{fused}. Re-export without the flag: "
        f"cinema-trt export --preset {export.preset} --out {stage.folder.parent} "
        f"{export.export_flags} --stages {stage.name}")


def check_graph_io(stage_spec: StageSpec, graph: OnnxGraphInfo, where: Path) -> None:
    """The ONNX graph must use the spec's tensor names (it may drop unused inputs)."""
    unknown = sorted(set(graph.inputs) - set(stage_spec.input_names))
    if unknown:
        raise ValueError(f"{where}: graph inputs {unknown} are not in the {stage_spec.name} "
                         f"spec {list(stage_spec.input_names)}; re-export the stage")
    missing_out = sorted(set(stage_spec.output_names) - set(graph.outputs))
    if missing_out:
        raise ValueError(f"{where}: graph lacks outputs {missing_out} of the "
                         f"{stage_spec.name} spec (it has {sorted(graph.outputs)}); "
                         "re-export the stage")
    dropped = [n for n in stage_spec.input_names if n not in graph.inputs]
    if dropped:
        log.warning("%s: the exported graph does not use inputs %s; the runner ignores them",
                    stage_spec.name, dropped)


def reuse_cached(build: StageBuild) -> Path | None:
    plan = cached_engine(build.out_dir, build.cache_key)
    if plan is not None:
        log.info("%s: reusing %s (cache key %s matches)", build.stage, plan,
                 build.cache_key[:12])
    return plan


def finish_build(build: StageBuild, plan: Path, extra: dict | None = None,
                 report: dict | None = None) -> Path:
    """Write the manifest beside `plan` (atomically; a plan without one is never reused).
    `report`: the engine report's summary (engines/report.py)."""
    record = BuildRecord(
        runtime=build.runtime.runtime, runtime_version=build.runtime.version,
        precision=build.build_config.precision.value,
        build_config=build.build_config.to_dict(), profiles=profiles_to_json(build.profiles),
        onnx_path=str(build.onnx_path), plan_file=plan.name,
        plan_sha256=artifact_sha256(plan), cache_key=build.cache_key,
        rebuild_command=build.rebuild_command, gpu_name=build.runtime.gpu_name,
        compute_capability=build.runtime.compute_capability,
        targets=list(build.build_config.targets), report=report or {},
        extra={"unused_inputs": [e.name for e in build.export.inputs
                                 if e.name not in build.graph.inputs], **(extra or {})})
    write_manifest(dataclasses.replace(build.export, build=record), build.out_dir)
    log.info("%s: wrote %s and its manifest", build.stage, plan)
    return plan
