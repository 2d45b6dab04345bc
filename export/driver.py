"""`export_stages`: every requested stage to `<out>/<stage>/model.onnx` + `manifest.json`.

Per stage: trace (dynamo) -> onnxscript cleanup -> spec dim names -> [FP8 Q/DQ] -> save
(external data above 2 GiB) -> strict shape inference + full checker -> ONNX Runtime vs
PyTorch on two dynamic shapes, gated by a tolerance -> manifest, written last.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cinema_trt.models.presets import CinemaConfig

from .compare import ErrorStats, error_stats, worst
from .fp8 import RECIPES, insert_fp8_qdq
from .manifest import (EXTERNAL_DATA_FILE, MANIFEST_FILE, MODEL_FILE, Manifest, Precision,
                       exporter_versions, files_sha256, state_dict_sha256, write_manifest)
from .onnx_graph import DEFAULT_OPSET, check_onnx, save_onnx, trace_to_onnx, weight_count
from .stages import StageExport, resolve_stages, sample_inputs, stage_exports

logger = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """An exported graph failed its check against PyTorch; no manifest was written."""


@dataclass(frozen=True)
class ExportResult:
    stage: str
    precision: Precision
    stage_dir: Path
    file_bytes: int  # graph + external data
    params: int  # weight elements in the graph
    error: ErrorStats | None  # worst over the check shapes, ORT vs torch fp32; None when
    # ORT cannot run the graph (TensorRT plugin nodes)
    seconds: float


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` if needed and prove it writable, before any expensive work."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"output folder {out} is not writable ({err.strerror or err}); "
                         f"choose another --out") from None
    return out


def load_or_build(config: CinemaConfig, weights: str | os.PathLike | None):
    """Models from a weights folder (whose config must match `config`) or from the preset."""
    from cinema_trt.models.factory import build_models, load_models

    if weights is None:
        return build_models(config)
    if not Path(weights).is_dir():
        raise FileNotFoundError(f"weights folder {weights} does not exist")
    return load_models(weights, config)


def _clear_stage(stage_dir: Path) -> None:
    """Delete the manifest first: from here until the new one lands, the folder is
    visibly incomplete."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST_FILE, MODEL_FILE, EXTERNAL_DATA_FILE):
        (stage_dir / name).unlink(missing_ok=True)


def _validate(stage: str, export: StageExport, models, stage_dir: Path,
              manifest: Manifest) -> ErrorStats:
    """ORT vs torch fp32 on every check shape; raises ExportError past the gate."""
    from .ort import OrtRunner

    runner = OrtRunner(stage_dir, providers=("CPUExecutionProvider",), manifest=manifest)
    stats = []
    for i, case in enumerate(export.checks):
        inputs = sample_inputs(models, stage, case, seed=100 + i)
        with torch.inference_mode():
            ref = export.module(**inputs)
        out = runner.run(inputs)[export.spec.output_names[0]]
        stats.append(error_stats(out, ref))
    result = worst(stats)
    recipe = RECIPES.get(stage) if manifest.precision is Precision.FP8 else None
    if recipe is not None and not result.cosine >= recipe.min_cosine:
        raise ExportError(f"{stage}: FP8 graph has cosine {result.cosine:.5f} to torch fp32, "
                          f"below the recipe's gate {recipe.min_cosine}; check calibration")
    if recipe is None and not result.rel_max <= export.tolerance:
        raise ExportError(f"{stage}: ONNX Runtime differs from torch by {result.max_abs:.3g} "
                          f"({result.rel_max:.3g} of the output scale > {export.tolerance}); "
                          f"the graph is wrong, not imprecise")
    return result


def _manifest(stage: str, export: StageExport, models, precision: Precision,
              opset: int, files: list[Path], quantization: dict) -> Manifest:
    return Manifest(stage=stage, preset=models.config.name, opset=opset, precision=precision,
                    **Manifest.io_from_spec(export.spec),
                    source_sha256=state_dict_sha256(export.module),
                    onnx_sha256=files_sha256(files), versions=exporter_versions(),
                    config=models.config.to_dict(), external_data=len(files) > 1,
                    quantization=quantization)


def export_stage(stage: str, export: StageExport, models, out_dir: Path,
                 amax: dict[str, float] | None = None, opset: int = DEFAULT_OPSET,
                 calibrator: str = "builtin") -> ExportResult:
    """Export one stage; `amax` (layer -> calibrated input amax, from `calibrator`) makes
    it FP8."""
    start = time.perf_counter()
    stage_dir = out_dir / stage
    _clear_stage(stage_dir)
    example = sample_inputs(models, stage, export.example)
    model = trace_to_onnx(export.module, export.spec, example, opset,
                          attention_plugin=export.attention_plugin)
    precision, quantization = Precision.FP32, {}
    if amax is not None:
        layers = insert_fp8_qdq(model, amax)
        precision = Precision.FP8
        recipe = RECIPES[stage]
        quantization = {"format": "float8e4m3fn", "activations": "per-tensor amax (max)",
                        "weights": "per-output-channel amax", "exclude": list(recipe.exclude),
                        "why": recipe.why, "calibrator": calibrator_version(calibrator),
                        "layers": {n: amax[n] for n in layers}}
    files = save_onnx(model, stage_dir / MODEL_FILE)
    del model
    check_onnx(files[0])
    if stage == "mllm_text":
        from .mllm_split import save_glue

        save_glue(models.mllm, stage_dir)
    manifest = _manifest(stage, export, models, precision, opset, files, quantization)
    if export.attention_plugin:
        error = None
        validation = {"skipped": "TensorRT plugin nodes: ONNX Runtime cannot run this graph"}
    else:
        error = _validate(stage, export, models, stage_dir, manifest)
        validation = {"reference": "torch fp32", "cases": [dict(c) for c in export.checks],
                      **error.to_dict()}
    manifest = dataclasses.replace(manifest, validation=validation)
    write_manifest(manifest, stage_dir)  # last: the folder is complete from here on
    return ExportResult(stage, precision, stage_dir, sum(f.stat().st_size for f in files),
                        weight_count(files[0]), error, time.perf_counter() - start)


def calibrator_version(calibrator: str) -> str:
    """'builtin', or 'modelopt <version>' (the manifest records what calibrated it)."""
    if calibrator != "modelopt":
        return calibrator
    from importlib import metadata

    return f"modelopt {metadata.version('nvidia-modelopt')}"


def export_stages(config: CinemaConfig, out_dir: str | os.PathLike,
                  stages: list[str] | tuple[str, ...] | None = None,
                  weights: str | os.PathLike | None = None, fp8: bool = False,
                  progress: bool = True, calibrator: str = "builtin",
                  attention_plugin: bool = False) -> list[ExportResult]:
    """Export `stages` (default: all; "mllm" = mllm_vision + mllm_text) of `config`.

    weights: a folder from models.factory.save_models (its config must match `config`),
    else the preset's seeded random weights. fp8: stages with an FP8 recipe (dit,
    connector, mllm_text) are calibrated on pipeline runs and exported with FP8 Q/DQ.
    calibrator: "builtin" or "modelopt" (NVIDIA ModelOpt; see export/calibration.py).
    attention_plugin: the DiT's attention becomes TensorRT plugin nodes (the Triton
    kernel); such a graph runs only in TensorRT, so its ORT check is skipped.
    """
    from tqdm import tqdm

    from .calibration import CALIBRATORS, calibrate, import_modelopt

    if calibrator not in CALIBRATORS:
        raise ValueError(f"calibrator={calibrator!r} must be one of {list(CALIBRATORS)}")
    if calibrator != "builtin" and not fp8:
        raise ValueError(f"calibrator={calibrator!r} only applies to FP8 exports; add fp8 "
                         f"(--fp8) or drop the calibrator")
    if attention_plugin and fp8:
        raise ValueError("attention_plugin cannot combine with fp8: the plugin takes "
                         "fp16/bf16 and a strongly typed FP8 build keeps the fp32 graph's types")
    if calibrator == "modelopt":
        import_modelopt()  # fail on a missing package before any expensive work
    names = resolve_stages(stages)
    out = check_out_dir(out_dir)
    models = load_or_build(config, weights)
    exports = stage_exports(models, names, attention_plugin=attention_plugin)
    amax: dict[str, dict[str, float]] = {}
    if fp8 and any(s in RECIPES for s in names):
        logger.info("FP8: calibrating %s on pipeline runs (%s)",
                    [s for s in names if s in RECIPES], calibrator)
        amax = calibrate(models, {s: exports[s].module for s in names if s in RECIPES},
                         calibrator=calibrator)
    results = []
    for stage in tqdm(names, desc="export", unit="stage", disable=not progress):
        logger.info("exporting %s", stage)
        results.append(export_stage(stage, exports[stage], models, out, amax.get(stage),
                                    calibrator=calibrator))
    return results


def format_summary(results: list[ExportResult]) -> str:
    """A plain-text table: stage, precision, file size, params, errors vs torch, time."""
    rows = [("stage", "precision", "size", "params", "max_abs", "rel_max", "cosine", "time")]
    for r in results:
        errors = ((f"{r.error.max_abs:.2e}", f"{r.error.rel_max:.2e}", f"{r.error.cosine:.6f}")
                  if r.error is not None else ("-", "-", "-"))
        rows.append((r.stage, r.precision.value, f"{r.file_bytes / 2**20:.2f} MiB",
                     f"{r.params / 1e6:.3f} M", *errors, f"{r.seconds:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
