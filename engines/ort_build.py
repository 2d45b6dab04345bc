"""`build --runtime ort`: an ONNX Runtime-optimized model for the CPU, with the same manifest
and cache key as a TensorRT engine.

ONNX Runtime optimizes a graph every time a session opens it; saving the optimized graph
(`SessionOptions.optimized_model_filepath`) moves that work to build time. Level ALL adds
CPU-layout rewrites, so the saved model is for CPUs with the builder's instruction set.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec

from .artifacts import StageBuild, finish_build, prepare_build, reuse_cached
from .config import BuildConfig, Precision, ort_optimization_level
from .deps import onnxruntime_runtime_info, require_onnxruntime
from .manifest import RuntimeInfo
from .shapes import DeploymentShapes

log = logging.getLogger(__name__)

ORT_MODEL_FILE = "model.onnx"
ORT_DATA_FILE = "model.onnx.data"


def build_ort_model(onnx_path: str | os.PathLike, out_dir: str | os.PathLike,
                    stage_spec: StageSpec, shapes: DeploymentShapes, build_config: BuildConfig,
                    config: CinemaConfig, runtime: RuntimeInfo | None = None) -> Path:
    """Write (or reuse) `out_dir/model.onnx` optimized for CPU + `out_dir/manifest.json`."""
    if build_config.precision is not Precision.FP32:
        raise ValueError(f"precision={build_config.precision.value} is not available with "
                         "--runtime ort, which builds fp32 CPU models; use --precision fp32 "
                         "(or --runtime tensorrt for fp16/bf16/fp8)")
    if build_config.weight_streaming or build_config.refittable:
        raise ValueError("--weight-streaming and --refittable are TensorRT options; "
                         "drop them with --runtime ort")
    ort = require_onnxruntime()
    build = prepare_build(onnx_path, out_dir, stage_spec, shapes, build_config, config,
                          runtime or onnxruntime_runtime_info())
    cached = reuse_cached(build)
    if cached is not None:
        return cached
    build.out_dir.mkdir(parents=True, exist_ok=True)
    staging = build.out_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _optimize(ort, build, staging / ORT_MODEL_FILE)
        for produced in staging.iterdir():  # the model, and its weights file when large
            os.replace(produced, build.out_dir / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    level = ort_optimization_level(build.build_config)
    return finish_build(build, build.out_dir / ORT_MODEL_FILE,
                        extra={"graph_optimization_level": level})


def _optimize(ort, build: StageBuild, target: Path) -> None:
    options = ort.SessionOptions()
    level = ort_optimization_level(build.build_config)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(target)
    if build.graph.external_data:
        # models over 2 GiB cannot be one protobuf: keep weights in a file beside the model
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", ORT_DATA_FILE)
    log.info("%s: optimizing %s with ONNX Runtime %s (%s)", build.stage, build.onnx_path,
             ort.__version__, level)
    # creating the session runs the optimizer and writes `optimized_model_filepath`
    ort.InferenceSession(str(build.onnx_path), options, providers=["CPUExecutionProvider"])
    if not target.is_file():
        raise RuntimeError(f"{build.stage}: ONNX Runtime did not write {target}")

