"""`build --runtime ort`: an ONNX Runtime-optimized model for the CPU, with the same manifest
and cache key as a TensorRT engine.

ONNX Runtime optimizes a graph every time a session opens it; saving the optimized graph
(`SessionOptions.optimized_model_filepath`) moves that work to build time. Level ALL adds
CPU-layout rewrites, so the saved model is for CPUs with the builder's instruction set.

The output folder runs without the export folder (`cinema_trt.export.ort.ort_runners`
opens it): its manifest is the export's with `build` filled in, so it describes the stage's
I/O, config and precision itself, and the stage's sidecar files (a split stage's glue: HF
config, token embeddings) are copied beside it.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import uuid
from pathlib import Path

from cinema_trt.export.manifest import EXTERNAL_DATA_FILE, MANIFEST_FILE, MODEL_FILE
from cinema_trt.models.backends import ORT
from cinema_trt.models.fileio import atomic_path
from cinema_trt.models.precision import ORT_NO_BF16, ORT_PRECISIONS

from .artifacts import StageBuild, finish_build, prepare_build, reuse_cached
from .config import BuildConfig, Precision, ort_optimization_level
from .deps import require_backend, runtime_info
from .exported import ExportedStage
from .manifest import RuntimeInfo
from .shapes import DeploymentShapes

log = logging.getLogger(__name__)


def build_ort_model(stage: ExportedStage, out_dir: str | os.PathLike,
                    shapes: DeploymentShapes, build_config: BuildConfig,
                    runtime: RuntimeInfo | None = None) -> Path:
    """Write (or reuse) `out_dir/model.onnx` optimized for CPU + `out_dir/manifest.json`."""
    if build_config.precision not in ORT_PRECISIONS:
        runs = " or ".join(p.value for p in ORT_PRECISIONS)
        raise ValueError(f"precision={build_config.precision.value} is not available with "
                         f"--runtime ort, which builds CPU models of {runs} exports "
                         f"({ORT_NO_BF16}); use --precision {runs} (or --runtime tensorrt "
                         f"for the others)")
    if build_config.weight_streaming or build_config.refittable:
        raise ValueError("--weight-streaming and --refittable are TensorRT options; "
                         "drop them with --runtime ort")
    ort = require_backend(ORT.name)
    build = prepare_build(stage, out_dir, shapes, build_config, runtime or runtime_info(ORT.name))
    if not build.build_config.strongly_typed and build_config.precision is not Precision.FP32:
        # ORT has no weak typing: it runs the graph's own types
        raise ValueError(f"precision={build_config.precision.value} on {build.onnx_path}, "
                         f"which computes in {build.export.compute_dtype}: --runtime ort runs an "
                         f"export as it is; build with --precision fp32, or re-export with "
                         f"--dtype {build_config.precision.value}")
    cached = reuse_cached(build)
    if cached is not None:
        copy_sidecars(build)
        return cached
    build.out_dir.mkdir(parents=True, exist_ok=True)
    staging = build.out_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _optimize(ort, build, staging / MODEL_FILE)
        # from here until finish_build the folder has no manifest: never reused half-replaced
        (build.out_dir / MANIFEST_FILE).unlink(missing_ok=True)
        for produced in staging.iterdir():  # the model, and its weights file when large
            os.replace(produced, build.out_dir / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    copy_sidecars(build)
    level = ort_optimization_level(build.build_config)
    return finish_build(build, build.out_dir / MODEL_FILE,
                        extra={"graph_optimization_level": level})


def copy_sidecars(build: StageBuild) -> None:
    """Copy the files the export's manifest lists as `sidecars` (a split stage's glue: HF
    config + embeddings) beside the build; unchanged copies (same size and mtime: copy2
    keeps the mtime) are not copied again."""
    for name in build.export.sidecars:
        source, target = build.onnx_path.parent / name, build.out_dir / name
        if not (target.is_file() and filecmp.cmp(source, target, shallow=True)):
            with atomic_path(target) as tmp:  # a reader sees the old file or the new one
                shutil.copy2(source, tmp)


def _optimize(ort, build: StageBuild, target: Path) -> None:
    options = ort.SessionOptions()
    level = ort_optimization_level(build.build_config)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(target)
    if build.graph.external_data:
        # models over 2 GiB cannot be one protobuf: keep weights in a file beside the model
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", EXTERNAL_DATA_FILE)
    log.info("%s: optimizing %s with ONNX Runtime %s (%s)", build.stage, build.onnx_path,
             ort.__version__, level)
    # creating the session runs the optimizer and writes `optimized_model_filepath`
    ort.InferenceSession(str(build.onnx_path), options, providers=["CPUExecutionProvider"])
    if not target.is_file():
        raise RuntimeError(f"{build.stage}: ONNX Runtime did not write {target}")

