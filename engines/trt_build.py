"""Build one stage's TensorRT engine from its ONNX export.

Flow: decide everything as data (artifacts.prepare_build, `builder_settings`), reuse the
cached plan when its key matches, else parse the ONNX (external weights are read beside it),
build with one optimization profile and the timing cache, and write plan + manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec

from .artifacts import StageBuild, finish_build, prepare_build, reuse_cached
from .config import BuildConfig, OnnxGraphInfo, network_flags, trt_flags
from .deps import require_tensorrt, tensorrt_runtime_info
from .manifest import RuntimeInfo, write_bytes_atomic
from .progress import BuildProgress, log_level
from .shapes import DeploymentShapes

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build the graph; the message lists its errors."""


def builder_settings(build: StageBuild) -> dict[str, Any]:
    """Every builder input as plain data (what `_build_serialized` applies)."""
    config = build.build_config
    return {"network_flags": network_flags(config), "builder_flags": trt_flags(config),
            "workspace_bytes": config.workspace_bytes,
            "optimization_level": config.optimization_level,
            "profiles": build.profiles, "timing_cache": config.timing_cache}


def build_engine(onnx_path: str | os.PathLike, out_dir: str | os.PathLike,
                 stage_spec: StageSpec, shapes: DeploymentShapes, build_config: BuildConfig,
                 config: CinemaConfig, should_stop: Callable[[], bool] | None = None,
                 runtime: RuntimeInfo | None = None) -> Path:
    """Build (or reuse) `out_dir/model.plan` + `out_dir/manifest.json`; returns the plan."""
    trt = require_tensorrt()
    build = key_plugin_kernels(prepare_build(onnx_path, out_dir, stage_spec, shapes,
                                             build_config, config,
                                             runtime or tensorrt_runtime_info()))
    cached = reuse_cached(build)
    if cached is not None:
        return cached
    build.out_dir.mkdir(parents=True, exist_ok=True)
    register_graph_plugins(build.graph)
    serialized = _build_serialized(trt, build, should_stop)
    plan = write_bytes_atomic(build.out_dir / PLAN_FILE, memoryview(serialized))
    # whoever deserialises the plan must register these plugins first (the JIT INT8 plugin
    # runs Python code), so the manifest names them
    return finish_build(build, plan, extra={"trt_plugins": sorted(build.graph.trt_plugins)})


def key_plugin_kernels(build: StageBuild) -> StageBuild:
    """Fold the plugin kernels' fingerprint into the cache key of a graph with plugin nodes:
    the engine embeds the Triton kernels compiled at build time, which the ONNX file does
    not pin."""
    if not build.graph.trt_plugins:
        return build
    from cinema_trt.kernels.trt_plugin import plugin_fingerprint

    key = hashlib.sha256(f"{build.cache_key}|{plugin_fingerprint()}".encode()).hexdigest()
    return dataclasses.replace(build, cache_key=key)


def register_graph_plugins(graph: OnnxGraphInfo) -> bool:
    """Register the Triton attention plugins if the graph has TensorRT plugin nodes (the
    ONNX parser looks each node up in the plugin registry); returns whether it did.
    Raises `TensorRTUnavailableError` (an ImportError) without TensorRT >= 10.8."""
    if not graph.trt_plugins:
        return False
    from cinema_trt.kernels.trt_plugin import register_plugins

    log.info("registering TensorRT plugins for %s", sorted(graph.trt_plugins))
    register_plugins()
    return True


def trt_logger(trt):
    """A `trt.ILogger` that forwards to Python logging."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            logging.getLogger("cinema_trt.engines.tensorrt").log(log_level(str(severity)), msg)

    return Logger()


def _progress_monitor(trt, progress: BuildProgress):
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            progress.phase_finish(phase_name)

    return Monitor()


def _member(enum, name: str, trt) -> Any:
    try:
        return getattr(enum, name)
    except AttributeError:
        raise EngineBuildError(f"TensorRT {trt.__version__} has no {enum.__name__}.{name}; "
                               "this build option needs another TensorRT version") from None


def _parse(trt, builder, logger, build: StageBuild, settings: dict):
    flags = 0
    for name in settings["network_flags"]:
        flags |= 1 << int(_member(trt.NetworkDefinitionCreationFlag, name, trt))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external weights next to the model are found
    if not parser.parse_from_file(str(build.onnx_path)):
        errors = "\n".join(f"  - {parser.get_error(i)}" for i in range(parser.num_errors))
        raise EngineBuildError(f"{build.stage}: TensorRT could not parse {build.onnx_path} "
                               f"({parser.num_errors} error(s)):\n{errors}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise EngineBuildError(f"{build.stage}: input {tensor.name!r} is a shape tensor "
                                   "(its values decide shapes); re-export the stage so it is "
                                   "only used as data")
        if tensor.name not in settings["profiles"] and any(d < 0 for d in tensor.shape):
            raise EngineBuildError(f"{build.stage}: dynamic input {tensor.name!r} has no "
                                   f"profile (profiles: {sorted(settings['profiles'])})")
    return network, parser


def _configure(trt, builder, build: StageBuild, settings: dict):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    config.builder_optimization_level = settings["optimization_level"]
    for name in settings["builder_flags"]:
        config.set_flag(_member(trt.BuilderFlag, name, trt))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in settings["profiles"].items():
        profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"{build.stage}: TensorRT rejected the profile "
                               f"{settings['profiles']} (see the log above)")
    return config


def _load_timing_cache(config, path: Path | None) -> None:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        # a cache from another TensorRT version or GPU: start a fresh one
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one",
                    path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        log.info("loaded timing cache %s (%d bytes)", path, len(data))


def _save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.get_timing_cache().serialize()
    write_bytes_atomic(path, memoryview(data))
    log.info("saved timing cache %s (%d bytes)", path, len(memoryview(data)))


def _build_serialized(trt, build: StageBuild, should_stop: Callable[[], bool] | None):
    settings = builder_settings(build)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, build, settings)
    config = _configure(trt, builder, build, settings)
    _load_timing_cache(config, settings["timing_cache"])
    progress = BuildProgress(build.stage, should_stop=should_stop)
    monitor = _progress_monitor(trt, progress)  # must outlive the build
    config.progress_monitor = monitor
    log.info("%s: building %s engine (flags %s, network %s)", build.stage,
             build.build_config.precision.value, settings["builder_flags"],
             settings["network_flags"])
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        progress.close()
    if serialized is None:
        raise EngineBuildError(f"{build.stage}: TensorRT failed to build the engine; its "
                               "errors are logged above (logger cinema_trt.engines.tensorrt)")
    _save_timing_cache(config, settings["timing_cache"])
    return serialized
