"""`export_stages`: every requested graph to `<out>/<graph>/model.onnx` + `manifest.json`.

Per graph (a stage object of models/stages.py says what each one is): [cast to fp16/bf16
behind float32 I/O] -> trace (dynamo) -> onnxscript cleanup -> spec dim names -> [FP8
Q/DQ] -> save (external data above 2 GiB) -> strict shape inference + full checker -> the
graph on ONNX Runtime vs PyTorch on its check cases, gated (export/validation.py) ->
manifest, written last.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cinema_trt.models.fileio import onnx_sha256
from cinema_trt.models.precision import compute_dtype, parse_dtype, policy, weight_format
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import to_spec_dtypes
from cinema_trt.models.stages import WEIGHT_ONLY_GRAPHS, graph, resolve_graphs

from .check import validate
from .compare import ErrorStats
from .dtype import cast_module, unwrap_scopes
from .fp8 import insert_fp8_qdq
from .manifest import (
    EXTERNAL_DATA_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    Precision,
    exporter_versions,
    state_dict_sha256,
    write_manifest,
)
from .onnx_graph import DEFAULT_OPSET, check_onnx, save_onnx, trace_to_onnx, weight_count
from .validation import Validation
from .weight_only import WeightOnlyConfig, emulate_rtn

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels
    from cinema_trt.models.stage import Graph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    stage: str  # the graph's name
    precision: Precision
    stage_dir: Path
    file_bytes: int  # graph + external data
    params: int  # weight elements in the graph
    error: ErrorStats | None  # worst over the check cases, ORT vs torch fp32; None when
    # ORT cannot run the graph (TensorRT plugin nodes)
    seconds: float
    weight_only: str = ""  # its weights' format (int4 | int8) when exported --weight-only


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


def _manifest(graph: Graph, models: CinemaModels, source: torch.nn.Module,
              precision: Precision, opset: int, files: list[Path], dtype: Precision
              ) -> Manifest:
    io = Manifest.io_from_spec(graph.exported_spec(models.config, compute_dtype(dtype)))
    return Manifest(stage=graph.name, preset=models.config.name, opset=opset,
                    precision=precision, compute_dtype=compute_dtype(dtype),
                    inputs=io["inputs"], outputs=io["outputs"],
                    source_sha256=state_dict_sha256(source), onnx_sha256=onnx_sha256(files[0]),
                    versions=exporter_versions(), config=models.config.to_dict(),
                    external_data=len(files) > 1)


def export_stage(graph: Graph, models: CinemaModels, out_dir: Path,
                 amax: dict[str, float] | None = None, opset: int = DEFAULT_OPSET,
                 calibrator: str = "builtin", dtype: Precision = Precision.FP32,
                 plugin: bool = False, weight_only: WeightOnlyConfig | None = None
                 ) -> ExportResult:
    """Export one graph computing in `dtype` (fp32 | fp16 | bf16; the graph's I/O is
    `graph.exported_spec`'s: float32 but for the decoder's chunk state); `amax` (layer ->
    calibrated input amax, from `calibrator`) makes it FP8; `weight_only` quantizes its
    weights (export/weight_only.py, the graph's `weight_only` recipe) and keeps `dtype` for
    its arithmetic; `plugin`: its attention as TensorRT plugin nodes (only TensorRT runs it,
    so the check against PyTorch is skipped)."""
    start = time.perf_counter()
    stage_dir = out_dir / graph.name
    _clear_stage(stage_dir)
    spec = graph.exported_spec(models.config, compute_dtype(dtype))
    example, checks = graph.cases(models.config)
    source = graph.module(models, plugin).eval()
    module = cast_module(source, dtype, tuple(t.dtype for t in spec.outputs))
    opset = max(opset, policy(dtype).min_opset)
    model = trace_to_onnx(module, spec,
                          to_spec_dtypes(spec, graph.sample_inputs(models.config, example)), opset,
                          attention_plugin=plugin)
    if module is not source:
        unwrap_scopes(model)
    manifest_precision, quantization, min_cosine = dtype, {}, None
    if amax is not None:
        manifest_precision, min_cosine = Precision.FP8, graph.recipes[Precision.FP8].min_cosine
        quantization = _quantize(model, graph, amax, calibrator, dtype)
    files = save_onnx(model, stage_dir / MODEL_FILE)
    del model
    check_onnx(files[0])
    gated, emulated = "FP8", None
    if weight_only is not None:
        gated = weight_only.format.name.upper()
        min_cosine = graph.weight_only[weight_only.format].min_cosine
        files, quantization, opset = _weight_only(graph, models, stage_dir, weight_only, dtype)
        emulated = emulate_rtn(source, quantization["layers"], dataclasses.replace(
            weight_only, block_size=quantization["block_size"]))
    manifest = dataclasses.replace(
        _manifest(graph, models, source, manifest_precision, opset, files, dtype),
        quantization=quantization, sidecars=graph.save_glue(models, stage_dir))
    validation = Validation(skipped="TensorRT plugin nodes: ONNX Runtime cannot run this "
                                    "graph") if plugin else \
        validate(graph, models, stage_dir, manifest, (source, module), checks, min_cosine,
                 gated, emulated)
    write_manifest(dataclasses.replace(manifest, validation=validation), stage_dir)  # last
    return ExportResult(graph.name, manifest_precision, stage_dir,
                        sum(f.stat().st_size for f in files), weight_count(files[0]),
                        validation.error, time.perf_counter() - start,
                        weight_only.format.name if weight_only else "")


def _quantize(model, graph: Graph, amax: dict[str, float], calibrator: str,
              dtype: Precision) -> dict:
    """Insert the FP8 Q/DQ pairs; returns the manifest's `quantization` record."""
    layers = insert_fp8_qdq(model, amax, dtype=compute_dtype(dtype))
    recipe = graph.recipes[Precision.FP8]
    return {"format": policy(Precision.FP8).quantized, "activations": "per-tensor amax (max)",
            "weights": "per-output-channel amax", "exclude": list(recipe.exclude),
            "why": recipe.why, "calibrator": calibrator_version(calibrator),
            "compute_dtype": compute_dtype(dtype), "layers": {n: amax[n] for n in layers}}


def _weight_only(graph: Graph, models: CinemaModels, stage_dir: Path,
                 config: WeightOnlyConfig, dtype: Precision) -> tuple[list[Path], dict, int]:
    """Quantize the saved graph's weights in place; (its files, the manifest's
    `quantization` record, its opset)."""
    import onnx

    from .weight_only import quantize_weight_only

    path = stage_dir / MODEL_FILE
    with tempfile.TemporaryDirectory(dir=stage_dir, prefix=".weight-only-") as folder:
        result = quantize_weight_only(path, Path(folder) / MODEL_FILE,
                                      graph.calibration_batches(models), config)
        model = onnx.load(str(result.path))  # with its external data, before the folder goes
    for name in (EXTERNAL_DATA_FILE, MODEL_FILE):
        (stage_dir / name).unlink(missing_ok=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    files = save_onnx(model, path)  # our layout: model.onnx (+ model.onnx.data)
    del model
    check_onnx(files[0])
    recipe, format_ = graph.weight_only[config.format], config.format
    return files, {
        "format": format_.name, "weights": f"{format_.element} through DequantizeLinear, "
        f"one scale per {format_.scales}", "method": config.method,
        "block_size": result.block_size,
        "exclude": list(recipe.exclude), "excluded": list(result.excluded), "why": recipe.why,
        "quantizer": f"modelopt {_version('nvidia-modelopt')}",
        "compute_dtype": compute_dtype(dtype), "layers": list(result.quantized),
        "weight_bytes": list(result.weight_bytes)}, opset


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


def calibrator_version(calibrator: str) -> str:
    """'builtin', or 'modelopt <version>' (the manifest records what calibrated it)."""
    if calibrator != "modelopt":
        return calibrator
    return f"modelopt {_version('nvidia-modelopt')}"


def export_stages(config: CinemaConfig, out_dir: str | os.PathLike,
                  stages: list[str] | tuple[str, ...] | None = None,
                  weights: str | os.PathLike | None = None, fp8: bool = False,
                  progress: bool = True, calibrator: str = "builtin",
                  attention_plugin: bool = False, dtype: str | Precision = "fp32",
                  weight_only: str | None = None, weight_only_method: str = "rtn_dq",
                  weight_only_block: int = 0) -> list[ExportResult]:
    """Export the graphs of `stages` (default: all; a split stage names its graphs).

    weights: a folder from models.factory.save_models (its config must match `config`),
    else the preset's seeded random weights. fp8: graphs with an FP8 recipe (their
    `recipes`, models/stage.py) are calibrated on pipeline runs and exported with FP8 Q/DQ.
    calibrator: "builtin" or "modelopt" (NVIDIA ModelOpt; see export/calibration.py).
    attention_plugin: the DiT's attention becomes TensorRT plugin nodes (the Triton
    kernel); such a graph runs only in TensorRT, so its ORT check is skipped.
    dtype: what the graphs compute in, fp32 | fp16 | bf16 (export/dtype.py); with fp8, what
    runs outside the Q/DQ pairs. TensorRT 11 builds only the types a graph states.
    weight_only: int4 | int8 (models/precision.WEIGHT_FORMATS): the graphs with a
    `weight_only` recipe (the MLLM's text graph) get integer weights through ModelOpt's ONNX
    quantizer, `weight_only_method` (rtn_dq | awq_clip | awq_lite), INT4 blocks of
    `weight_only_block` input rows (0: the largest up to 128 that fits); they are not FP8.
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
    graphs = [graph(name) for name in resolve_graphs(stages)]
    weight_only_config = _weight_only_config(graphs, weight_only, weight_only_method,
                                             weight_only_block)
    out = check_out_dir(out_dir)
    models = load_or_build(config, weights)
    amax: dict[str, dict[str, float]] = {}
    quantized = [g for g in graphs if Precision.FP8 in g.recipes
                 and g.name not in weight_only_config]
    if fp8 and quantized:
        logger.info("FP8: calibrating %s on pipeline runs (%s)", [g.name for g in quantized],
                    calibrator)
        # the modules the pipeline runs: the plugin DiT is a twin sharing their weights, so
        # its layers have the same names and amax, but hooks on it would never fire
        amax = calibrate(models, {g.name: g.module(models) for g in quantized},
                         calibrator=calibrator)
    results = []
    for g in tqdm(graphs, desc="export", unit="stage", disable=not progress):
        logger.info("exporting %s", g.name)
        results.append(export_stage(
            g, models, out, amax.get(g.name), calibrator=calibrator, dtype=dtype,
            plugin=attention_plugin and g.attention_plugin,
            weight_only=weight_only_config.get(g.name)))
    return results


def _weight_only_config(graphs: list[Graph], format_name: str | None, method: str,
                        block: int) -> dict[str, WeightOnlyConfig]:
    """{graph name: its weight-only config} for the graphs of `graphs` with a recipe for
    `format_name`; checked (options, recipes, the quantizer installed) before any work."""
    from .weight_only import import_quantizer

    if format_name is None:
        return {}
    format_ = weight_format(format_name)  # ValueError naming the formats
    configs = {g.name: WeightOnlyConfig.of(format_name, method, block,
                                           g.weight_only[format_].exclude)
               for g in graphs if format_ in g.weight_only}
    if not configs:
        raise ValueError(f"weight_only={format_name!r}: none of {[g.name for g in graphs]} "
                         f"has a weight-only recipe; those that do: "
                         f"{list(WEIGHT_ONLY_GRAPHS)}")
    import_quantizer()  # a missing package fails here, not after the other exports
    return configs


