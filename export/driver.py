"""`export_stages`: every requested stage to `<out>/<stage>/model.onnx` + `manifest.json`.

Per stage: [cast to fp16/bf16 behind float32 I/O] -> trace (dynamo) -> onnxscript cleanup
-> spec dim names -> [FP8 Q/DQ] -> save (external data above 2 GiB) -> strict shape
inference + full checker -> the graph on ONNX Runtime (bf16: upcast to fp32) vs PyTorch
on two dynamic shapes, gated by a tolerance -> manifest, written last.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cinema_trt.models.cache import ArtifactCache, Entry, folder_sha256
from cinema_trt.models.fileio import onnx_sha256
from cinema_trt.models.precision import compute_dtype, parse_dtype, policy
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.stages import GLUE_GRAPHS

from .compare import ErrorStats, error_stats, worst
from .dtype import (
    cast_module,
    round_parameters,
    unwrap_scopes,
    upcast_bfloat16,
)
from .fp8 import RECIPES, insert_fp8_qdq
from .manifest import (
    EXTERNAL_DATA_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ExportExpectation,
    Manifest,
    Precision,
    check_export,
    exporter_versions,
    state_dict_sha256,
    write_manifest,
)
from .onnx_graph import DEFAULT_OPSET, check_onnx, save_onnx, trace_to_onnx, weight_count
from .stages import StageExport, resolve_stages, sample_inputs, stage_exports

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels

logger = logging.getLogger(__name__)


# fp16 graphs: their error to torch fp32 may be at most twice the error PyTorch itself
# makes in fp16 on the same inputs (the rule tests/kernels/test_triton_attention.py applies
# to the kernels; ORT's CPU provider runs fp16 graphs with fp32 casts around ops it has no
# fp16 kernel for; measured 0.2-1.05x on the tiny and small presets).
FP16_ERROR_FACTOR = 2.0
# bf16 graphs run upcast to fp32 (ORT's CPU provider has no bf16 kernels) against the module
# with its parameters rounded to bf16: they compute the same function, except for the scalar
# constants the trace wrote in bf16 (each off by up to 2^-9). So the graph may differ from
# the rounded module by at most half of what the rounding itself changes (measured up to
# 0.18x: the VAEs and the small preset's connector; 1e-2x or less elsewhere), or the fp32
# tolerance. A wrong graph (mask, RoPE, a dropped input) differs by far more than the
# rounding.
BF16_ROUNDING_FRACTION = 0.5


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


def load_or_build(config: CinemaConfig, weights: str | os.PathLike | None) -> CinemaModels:
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


def _validate(stage: str, export: StageExport, models, stage_dir: Path, manifest: Manifest,
              traced: torch.nn.Module) -> dict:
    """The graph vs PyTorch on every check shape; raises ExportError past the gate.

    Gates: FP8 graphs, the recipe's cosine to torch fp32; fp32 graphs, `export.tolerance`;
    fp16 and bf16 graphs, the derived tolerances above. `traced` is the module the graph
    was traced from (`export.module` cast to the export's dtype).
    """
    compute = manifest.compute_dtype
    fp8 = RECIPES.get(stage) if manifest.precision is Precision.FP8 else None
    # (reference, companion): the graph must match `reference`; how far `companion` is
    # from it scales the tolerance (None: the fixed fp32 tolerance)
    reference, companion = export.module, None
    if compute == "float16":
        companion = traced
    elif compute == "bfloat16" and fp8 is None:
        reference, companion = round_parameters(export.module, torch.bfloat16), export.module
    with _graph_runner(stage_dir, manifest) as run:
        stats, spread = [], []
        for i, case in enumerate(export.checks):
            inputs = sample_inputs(models, stage, case, seed=100 + i)
            with torch.inference_mode():
                ref = reference(**inputs)
                if companion is not None:
                    spread.append(error_stats(companion(**inputs), ref))
            stats.append(error_stats(run(inputs)[export.spec.output_names[0]], ref))
    result = worst(stats)
    bf16 = compute == "bfloat16"
    validation = {"reference": "torch fp32" + (" with parameters rounded to bf16"
                                               if bf16 and fp8 is None else ""),
                  "graph": "onnxruntime" + (", the graph upcast to float32" if bf16 else ""),
                  "cases": [dict(c) for c in export.checks], **result.to_dict()}
    if spread:
        validation["spread"] = worst(spread).to_dict()
    if fp8 is not None:
        _gate_fp8(stage, fp8.min_cosine, result, validation)
    else:
        _gate_error(stage, compute, export.tolerance, result, validation)
    return validation


def _gate_fp8(stage: str, min_cosine: float, result: ErrorStats, validation: dict) -> None:
    """FP8's loss comes on top of fp16's own: their (1 - cosine) add up."""
    spread = validation.get("spread")
    gate = min_cosine - (FP16_ERROR_FACTOR * (1 - spread["cosine"]) if spread else 0.0)
    validation["min_cosine"] = gate
    if not result.cosine >= gate:
        raise ExportError(f"{stage}: FP8 graph has cosine {result.cosine:.5f} to torch fp32, "
                          f"below the gate {gate:.5f} (the recipe's {min_cosine}); check "
                          f"calibration")


def _gate_error(stage: str, compute: str, tolerance: float, result: ErrorStats,
                validation: dict) -> None:
    spread = validation.get("spread")
    if spread is not None:
        factor = FP16_ERROR_FACTOR if compute == "float16" else BF16_ROUNDING_FRACTION
        tolerance = max(tolerance, factor * spread["rel_max"])
    validation["tolerance"] = tolerance
    if not result.rel_max <= tolerance:
        raise ExportError(f"{stage}: the {compute} graph differs from "
                          f"{validation['reference']} by {result.max_abs:.3g} "
                          f"({result.rel_max:.3g} of the output scale > {tolerance:.3g}); "
                          f"the graph is wrong, not imprecise")


@contextmanager
def _graph_runner(stage_dir: Path, manifest: Manifest):
    """run(inputs) -> outputs of the graph being exported, on ONNX Runtime's CPU provider;
    a bf16 graph is upcast to float32 first, in a temporary folder beside the export."""
    from .ort import OrtRunner

    if manifest.compute_dtype != "bfloat16":
        yield OrtRunner(stage_dir, providers=("CPUExecutionProvider",), manifest=manifest).run
        return
    import onnx

    with tempfile.TemporaryDirectory(dir=stage_dir, prefix=".upcast-") as folder:
        save_onnx(upcast_bfloat16(onnx.load(str(stage_dir / MODEL_FILE))),
                  Path(folder) / MODEL_FILE)
        upcast = dataclasses.replace(manifest, compute_dtype="float32")
        yield OrtRunner(folder, providers=("CPUExecutionProvider",), manifest=upcast).run


def _manifest(stage: str, export: StageExport, models: CinemaModels, precision: Precision,
              opset: int, files: list[Path], quantization: dict, compute_dtype: str) -> Manifest:
    io = Manifest.io_from_spec(export.spec)
    return Manifest(stage=stage, preset=models.config.name, opset=opset, precision=precision,
                    compute_dtype=compute_dtype, inputs=io["inputs"], outputs=io["outputs"],
                    source_sha256=state_dict_sha256(export.module),
                    onnx_sha256=onnx_sha256(files[0]), versions=exporter_versions(),
                    config=models.config.to_dict(), external_data=len(files) > 1,
                    quantization=quantization)


def export_stage(stage: str, export: StageExport, models: CinemaModels, out_dir: Path,
                 amax: dict[str, float] | None = None, opset: int = DEFAULT_OPSET,
                 calibrator: str = "builtin", dtype: Precision = Precision.FP32
                 ) -> ExportResult:
    """Export one stage computing in `dtype` (fp32 | fp16 | bf16; the graph's I/O stays
    float32); `amax` (layer -> calibrated input amax, from `calibrator`) makes it FP8."""
    start = time.perf_counter()
    stage_dir = out_dir / stage
    _clear_stage(stage_dir)
    example = sample_inputs(models, stage, export.example)
    module = cast_module(export.module, dtype)
    opset = max(opset, policy(dtype).min_opset)
    model = trace_to_onnx(module, export.spec, example, opset,
                          attention_plugin=export.attention_plugin)
    if module is not export.module:
        unwrap_scopes(model)
    precision, quantization = dtype, {}
    if amax is not None:
        precision = Precision.FP8
        quantization = _quantize(model, stage, amax, calibrator, dtype)
    files = save_onnx(model, stage_dir / MODEL_FILE)
    del model
    check_onnx(files[0])
    sidecars = {}
    if stage in GLUE_GRAPHS:
        from .mllm_split import save_glue

        sidecars = save_glue(models.mllm, stage_dir)
    manifest = dataclasses.replace(
        _manifest(stage, export, models, precision, opset, files, quantization,
                  compute_dtype(dtype)), sidecars=sidecars)
    validation: dict[str, Any]
    if export.attention_plugin:
        error = None
        validation = {"skipped": "TensorRT plugin nodes: ONNX Runtime cannot run this graph"}
    else:
        validation = _validate(stage, export, models, stage_dir, manifest, module)
        error = ErrorStats(max_abs=validation["max_abs"], scale=validation["scale"],
                           cosine=validation["cosine"], rel_l2=validation["rel_l2"])
    manifest = dataclasses.replace(manifest, validation=validation)
    write_manifest(manifest, stage_dir)  # last: the folder is complete from here on
    return ExportResult(stage, precision, stage_dir, sum(f.stat().st_size for f in files),
                        weight_count(files[0]), error, time.perf_counter() - start)


def _quantize(model, stage: str, amax: dict[str, float], calibrator: str,
              dtype: Precision) -> dict:
    """Insert the FP8 Q/DQ pairs; returns the manifest's `quantization` record."""
    layers = insert_fp8_qdq(model, amax, dtype=compute_dtype(dtype))
    recipe = RECIPES[stage]
    return {"format": policy(Precision.FP8).quantized, "activations": "per-tensor amax (max)",
            "weights": "per-output-channel amax", "exclude": list(recipe.exclude),
            "why": recipe.why, "calibrator": calibrator_version(calibrator),
            "compute_dtype": compute_dtype(dtype), "layers": {n: amax[n] for n in layers}}


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
                  attention_plugin: bool = False, dtype: str | Precision = "fp32"
                  ) -> list[ExportResult]:
    """Export `stages` (default: all; a split stage names its graphs, models/stages.py).

    weights: a folder from models.factory.save_models (its config must match `config`),
    else the preset's seeded random weights. fp8: graphs with an FP8 recipe (FP8_GRAPHS
    in models/stages.py) are calibrated on pipeline runs and exported with FP8 Q/DQ.
    calibrator: "builtin" or "modelopt" (NVIDIA ModelOpt; see export/calibration.py).
    attention_plugin: the DiT's attention becomes TensorRT plugin nodes (the Triton
    kernel); such a graph runs only in TensorRT, so its ORT check is skipped.
    dtype: what the graphs compute in, fp32 | fp16 | bf16 (export/dtype.py); with fp8, what
    runs outside the Q/DQ pairs. TensorRT 11 builds only the types a graph states.
    """
    from tqdm import tqdm

    from .calibration import CALIBRATORS, calibrate, import_modelopt

    if calibrator not in CALIBRATORS:
        raise ValueError(f"calibrator={calibrator!r} must be one of {list(CALIBRATORS)}")
    if calibrator != "builtin" and not fp8:
        raise ValueError(f"calibrator={calibrator!r} only applies to FP8 exports; add fp8 "
                         f"(--fp8) or drop the calibrator")
    dtype = parse_dtype(dtype)
    if attention_plugin and fp8 and dtype is Precision.FP32:
        raise ValueError("attention_plugin with fp8 needs dtype fp16 or bf16: the plugin "
                         "takes fp16/bf16 tensors and a strongly typed FP8 build keeps the "
                         "graph's types, which are fp32 with dtype fp32")
    if calibrator == "modelopt":
        import_modelopt()  # fail on a missing package before any expensive work
    names = resolve_stages(stages)
    out = check_out_dir(out_dir)
    models = load_or_build(config, weights)
    exports = stage_exports(models, names, attention_plugin=attention_plugin)
    amax: dict[str, dict[str, float]] = {}
    quantized = tuple(s for s in names if s in RECIPES)
    if fp8 and quantized:
        logger.info("FP8: calibrating %s on pipeline runs (%s)", list(quantized), calibrator)
        # the modules the pipeline runs: the plugin DiT is a twin sharing their weights, so
        # its layers have the same names and amax, but hooks on it would never fire
        modules = stage_exports(models, quantized) if attention_plugin else exports
        amax = calibrate(models, {s: modules[s].module for s in quantized},
                         calibrator=calibrator)
    results = []
    for stage in tqdm(names, desc="export", unit="stage", disable=not progress):
        logger.info("exporting %s", stage)
        results.append(export_stage(stage, exports[stage], models, out, amax.get(stage),
                                    calibrator=calibrator, dtype=dtype))
    return results


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
    names, compute = resolve_stages(stages), parse_dtype(dtype)
    versions = exporter_versions()
    inputs = {"weights": folder_sha256(weights) if weights else "seeded",
              "config": config.to_dict(), "dtype": compute.value, "fp8": fp8,
              "stages": names, "versions": versions}
    sources = {s: state_dict_sha256(e.module)
               for s, e in stage_exports(models, names).items()} if models else {}

    def check(folder: Path) -> None:
        for stage in names:
            precision = Precision.FP8 if fp8 and stage in RECIPES else compute
            check_export(folder / stage, ExportExpectation(
                config, precision, compute_dtype(compute), sources.get(stage), versions))

    return cache.entry("onnx", inputs, lambda out: export_stages(
        config, out, names, weights, fp8=fp8, progress=progress, dtype=compute), check)


def format_summary(results: list[ExportResult]) -> str:
    """A plain-text table: stage, precision, file size, params, errors vs torch, time."""
    rows = [("stage", "precision", "size", "params", "max_abs", "rel_max", "cosine", "time")]
    for r in results:
        errors = ((f"{r.error.max_abs:.2e}", f"{r.error.rel_max:.2e}", f"{r.error.cosine:.6f}")
                  if r.error is not None else ("-", "-", "-"))
        rows.append((r.stage, r.precision.value, f"{r.file_bytes / 2**20:.2f} MiB",
                     f"{r.params / 1e6:.3f} M", *errors, f"{r.seconds:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)
