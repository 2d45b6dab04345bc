"""Build one stage's TensorRT engine from its ONNX export, on either TensorRT backend
(models/backends.py: `tensorrt` on the target GPU, `tensorrt-rtx` on any machine).

Flow: decide everything as data (artifacts.prepare_build, `builder_settings`), reuse the
cached plan when its key matches, else parse the ONNX (external weights are read beside it),
build with one optimization profile (DETAILED profiling verbosity, the backend's targets
and caches), and write plan, `layers.json` (engines/report.py) and manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cinema_trt.models.backends import TENSORRT, Backend, get_backend
from cinema_trt.models.fileio import atomic_write

from .artifacts import StageBuild, finish_build, prepare_build, reuse_cached
from .config import BuildConfig, OnnxGraphInfo, network_flags, trt_flags
from .deps import require_backend, runtime_info
from .exported import ExportedStage
from .manifest import RuntimeInfo
from .progress import TENSORRT_LOG, BuildProgress
from .report import (
    LayerRow,
    layers_from_inspector,
    parse_layers,
    parse_memory,
    summarize,
    write_layers,
)
from .shapes import DeploymentShapes

log = logging.getLogger(__name__)

PLAN_FILE = "model.plan"


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build the graph; the message lists its errors."""


def builder_settings(build: StageBuild) -> dict[str, Any]:
    """Every builder input as plain data (what `_build_serialized` applies)."""
    config = build.build_config
    backend = get_backend(build.runtime.runtime)
    return {"network_flags": network_flags(config), "builder_flags": trt_flags(config),
            "workspace_bytes": config.workspace_bytes,
            "optimization_level": config.optimization_level,
            "profiles": build.profiles,
            # TensorRT-RTX ignores timing caches (a DeprecationWarning says so)
            "timing_cache": config.timing_cache if backend.timing_cache else None,
            # ahead-of-time targets; TensorRT compiles for the GPU it builds on
            "compute_capabilities": list(config.targets) if backend.builds_without_gpu else [],
            # the layer list (layers.json) is logged only at DETAILED
            "profiling_verbosity": "DETAILED"}


def build_engine(stage: ExportedStage, out_dir: str | os.PathLike,
                 shapes: DeploymentShapes, build_config: BuildConfig,
                 should_stop: Callable[[], bool] | None = None,
                 runtime: RuntimeInfo | None = None, backend: str = TENSORRT.name) -> Path:
    """Build (or reuse) `out_dir/model.plan` + `layers.json` + `manifest.json`; returns the
    plan. `backend`: "tensorrt" (needs the target GPU) or "tensorrt-rtx" (any machine);
    `runtime`, when given, names the backend itself."""
    described = get_backend(runtime.runtime if runtime else backend)
    trt = require_backend(described.name)
    runtime = runtime or runtime_info(described.name, gpu=not described.builds_without_gpu)
    build = key_plugin_kernels(prepare_build(stage, out_dir, shapes, build_config, runtime))
    cached = reuse_cached(build)
    if cached is not None:
        return cached
    build.out_dir.mkdir(parents=True, exist_ok=True)
    register_graph_plugins(build.graph, described.module)
    with TENSORRT_LOG.capture() as messages:
        serialized = _build_serialized(trt, described, build, should_stop)
    plan = atomic_write(build.out_dir / PLAN_FILE, memoryview(serialized))
    layers = _logged_layers(build.stage, messages)
    if not layers and not described.builds_without_gpu:  # the build GPU can deserialize
        layers = _inspect_layers(trt, serialized)
    if not layers:
        log.warning("%s: the builder logged no layer list; layers.json is empty",
                    build.stage)
    write_layers(build.out_dir, layers)
    report = summarize(layers, parse_memory(messages), build.graph)
    # whoever deserialises the plan must register these plugins first (the JIT INT8 plugin
    # runs Python code), so the manifest names them
    return finish_build(build, plan, extra={"trt_plugins": sorted(build.graph.trt_plugins)},
                        report=report)


def _logged_layers(stage: str, messages: list[str]) -> list[LayerRow]:
    """The layer list of the builder log; a list in a format this parser does not know
    (another TensorRT version) costs the report, not the built engine."""
    try:
        return parse_layers(messages)
    except ValueError as error:
        log.warning("%s: %s; no layer report from the log", stage, error)
        return []


def _inspect_layers(trt, serialized) -> list[LayerRow]:
    """The layer list from IEngineInspector (needs the GPU the engine was built on)."""
    engine = trt.Runtime(trt_logger(trt)).deserialize_cuda_engine(serialized)
    if engine is None:
        return []
    inspector = engine.create_engine_inspector()
    return layers_from_inspector(
        inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def key_plugin_kernels(build: StageBuild) -> StageBuild:
    """Fold the plugin kernels' fingerprint into the cache key of a graph with plugin nodes:
    the engine embeds the Triton kernels compiled at build time, which the ONNX file does
    not pin."""
    if not build.graph.trt_plugins:
        return build
    from cinema_trt.kernels.trt_plugin import plugin_fingerprint

    key = hashlib.sha256(f"{build.cache_key}|{plugin_fingerprint()}".encode()).hexdigest()
    return dataclasses.replace(build, cache_key=key)


def register_graph_plugins(graph: OnnxGraphInfo, module: str = TENSORRT.module) -> bool:
    """Register the Triton attention plugins if the graph has TensorRT plugin nodes (the
    ONNX parser looks each node up in the plugin registry); returns whether it did.
    Raises `TensorRTUnavailableError` (an ImportError) without TensorRT >= 10.8."""
    if not graph.trt_plugins:
        return False
    from cinema_trt.kernels.trt_plugin import register_plugins

    log.info("registering TensorRT plugins for %s", sorted(graph.trt_plugins))
    register_plugins(module)
    return True


# one ILogger per TensorRT module for the whole process: builders and runtimes share it
# (TensorRT keeps using the first logger a process registers), and it outlives them all
_LOGGERS: dict[str, Any] = {}


def trt_logger(trt: Any) -> Any:
    """The process's `trt.ILogger` for this TensorRT module: forwards every message to
    Python logging and to the build capturing it (progress.TENSORRT_LOG)."""
    logger = _LOGGERS.get(trt.__name__)
    if logger is None:

        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                TENSORRT_LOG.record(str(severity), msg)

        logger = _LOGGERS[trt.__name__] = Logger()
    return logger


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
    config.profiling_verbosity = _member(trt.ProfilingVerbosity,
                                         settings["profiling_verbosity"], trt)
    targets = settings["compute_capabilities"]
    if targets:
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            if not config.set_compute_capability(
                    _member(trt.ComputeCapability, target.upper(), trt), index):
                raise EngineBuildError(f"{build.stage}: the builder refused target {target}")
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
    if path is None:  # none asked for, or a backend without one (TensorRT-RTX)
        return
    data = path.read_bytes() if path.is_file() else b""
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
    atomic_write(path, memoryview(data))
    log.info("saved timing cache %s (%d bytes)", path, len(memoryview(data)))


def _build_serialized(trt, backend: Backend, build: StageBuild,
                      should_stop: Callable[[], bool] | None):
    settings = builder_settings(build)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, build, settings)
    config = _configure(trt, builder, build, settings)
    _load_timing_cache(config, settings["timing_cache"])
    progress = BuildProgress(build.stage, should_stop=should_stop)
    monitor = _progress_monitor(trt, progress)  # must outlive the build
    config.progress_monitor = monitor
    log.info("%s: building %s %s engine (flags %s, network %s%s)", build.stage,
             backend.display, build.build_config.precision.value, settings["builder_flags"],
             settings["network_flags"],
             f", targets {','.join(settings['compute_capabilities'])}"
             if settings["compute_capabilities"] else "")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        progress.close()
    if serialized is None:
        raise EngineBuildError(f"{build.stage}: TensorRT failed to build the engine; its "
                               "errors are logged above (logger cinema_trt.engines.tensorrt)")
    _save_timing_cache(config, settings["timing_cache"])
    return serialized
