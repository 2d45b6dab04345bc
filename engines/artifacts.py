"""What every engine build does around the runtime call, shared by TensorRT and ONNX Runtime:
read the graph, derive the build config and profiles, key the cache, write the manifest.

Everything here runs without TensorRT, so it is unit tested on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cinema_trt.models.precision import precision_for
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec

from .backends import BACKENDS, resolve_targets, sm_name
from .config import (
    BuildConfig,
    OnnxGraphInfo,
    inspect_onnx,
    resolve_build_config,
    weak_typing_available,
)
from .manifest import (
    EngineManifest,
    RuntimeInfo,
    artifact_sha256,
    cache_key,
    cached_engine,
    onnx_sha256,
    profiles_to_json,
    rebuild_command,
    write_manifest,
)
from .shapes import DeploymentShapes, Profile, output_shapes_for, profiles_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageBuild:
    """One stage's build, fully decided before the runtime is called."""

    stage_spec: StageSpec
    onnx_path: Path
    out_dir: Path
    graph: OnnxGraphInfo
    build_config: BuildConfig  # resolved: strongly_typed derived from the graph
    profiles: dict[str, Profile]  # only the inputs the ONNX graph has
    output_shapes: dict[str, Profile]
    onnx_digest: str
    runtime: RuntimeInfo
    cache_key: str
    rebuild_command: str

    @property
    def stage(self) -> str:
        return self.stage_spec.name


def prepare_build(onnx_path: str | os.PathLike, out_dir: str | os.PathLike,
                  stage_spec: StageSpec, shapes: DeploymentShapes, build_config: BuildConfig,
                  config: CinemaConfig, runtime: RuntimeInfo) -> StageBuild:
    """Check the graph against the stage spec and decide everything the build needs."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found: run `cinema-trt export` first")
    graph = inspect_onnx(onnx_path)
    check_graph_io(stage_spec, graph, onnx_path)
    build_config = _with_targets(build_config, runtime)
    check_backend_graph(graph, runtime.runtime, onnx_path, config)
    resolved = resolve_build_config(build_config, graph,
                                    weak_typing_available(runtime.runtime, runtime.version))
    profiles = {name: value for name, value in profiles_for(stage_spec, shapes, config).items()
                if name in graph.inputs}
    digest = onnx_sha256(onnx_path)
    key = cache_key(stage_spec.name, digest, resolved, profiles, runtime)
    # the exporter's layout is <onnx dir>/<stage>/model.onnx -> rebuild from <onnx dir>
    command = rebuild_command(onnx_path.parent.parent, out_dir.parent, resolved,
                              (stage_spec.name,), shapes.source or None, runtime.runtime)
    return StageBuild(stage_spec, onnx_path, out_dir, graph, resolved, profiles,
                      output_shapes_for(stage_spec, shapes, config), digest, runtime, key,
                      command)


def _with_targets(build_config: BuildConfig, runtime: RuntimeInfo) -> BuildConfig:
    """The config with its GPU targets resolved for a TensorRT backend (backends.py)."""
    backend = BACKENDS.get(runtime.runtime)
    if backend is None:  # ONNX Runtime: CPU models, no GPU targets
        return build_config
    build_gpu = sm_name(runtime.compute_capability) if runtime.compute_capability else None
    targets = resolve_targets(backend, build_config.precision, build_config.targets, build_gpu)
    return dataclasses.replace(build_config, targets=targets)


def check_backend_graph(graph: OnnxGraphInfo, runtime: str, onnx_path: Path,
                        config: CinemaConfig) -> None:
    """Refuse plugin nodes where the backend has no plugins (TensorRT-RTX), naming the
    export command that avoids them."""
    backend = BACKENDS.get(runtime)
    if backend is None or backend.plugins or not graph.trt_plugins:
        return
    stage = onnx_path.parent.name
    raise ValueError(
        f"{onnx_path} has TensorRT plugin nodes {sorted(graph.trt_plugins)} (exported with "
        f"--attention-plugin), and {backend.display} has no Python plugins, so it cannot "
        f"parse them; its own fused attention replaces them. Re-export without the flag: "
        f"cinema-trt export --preset {config.name} --out {onnx_path.parent.parent} "
        f"--dtype {precision_for(graph.compute_type).value}"
        f"{' --fp8' if graph.has_fp8 else ''} --stages {stage}")


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


def _bindings(build: StageBuild, outputs: bool) -> list[dict]:
    specs = build.stage_spec.outputs if outputs else build.stage_spec.inputs
    types = build.graph.outputs if outputs else build.graph.inputs
    shapes = build.output_shapes if outputs else build.profiles
    return [{"name": s.name, "dtype": types[s.name], "dims": list(s.dims),
             "max_shape": list(shapes[s.name][2])}
            for s in specs if s.name in types]


def finish_build(build: StageBuild, plan: Path, extra: dict | None = None,
                 report: dict | None = None) -> Path:
    """Write the manifest beside `plan` (atomically; a plan without one is never reused).
    `report`: the engine report's summary (engines/report.py)."""
    manifest = EngineManifest(
        stage=build.stage, runtime=build.runtime.runtime,
        runtime_version=build.runtime.version, precision=build.build_config.precision.value,
        build_config=build.build_config.to_dict(), profiles=profiles_to_json(build.profiles),
        inputs=_bindings(build, outputs=False), outputs=_bindings(build, outputs=True),
        onnx_path=str(build.onnx_path), onnx_sha256=build.onnx_digest,
        plan_file=plan.name, plan_sha256=artifact_sha256(plan), cache_key=build.cache_key,
        rebuild_command=build.rebuild_command, gpu_name=build.runtime.gpu_name,
        compute_capability=build.runtime.compute_capability,
        targets=list(build.build_config.targets), report=report or {},
        extra={"unused_inputs": [n for n in build.stage_spec.input_names
                                 if n not in build.graph.inputs], **(extra or {})})
    write_manifest(build.out_dir, manifest)
    log.info("%s: wrote %s and its manifest", build.stage, plan)
    return plan
