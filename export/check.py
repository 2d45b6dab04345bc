"""An export's accuracy check: the graph on ONNX Runtime against PyTorch on the graph's check
cases, gated, giving the manifest's `Validation` record (export/validation.py).

Gates: FP8 and weight-only graphs, their recipe's cosine to torch fp32; fp32 graphs,
FP32_TOLERANCE; fp16 and bf16 graphs, the tolerances derived below.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cinema_trt.models.specs import to_spec_dtypes

from .compare import ErrorStats, error_stats, worst
from .validation import CHECK_SEED, TORCH_FP32, Validation

if TYPE_CHECKING:
    from cinema_trt.models.stage import Case, Graph

    from .manifest import Manifest, TensorEntry

# max |ORT - torch| / max |torch| allowed for fp32 graphs: fp32 rounding differs only in op
# order and fusions (~1e-6 relative at these depths), so 1e-4 leaves 100x headroom and
# still catches any real mismatch (a wrong mask or rope costs > 1e-2)
FP32_TOLERANCE = 1e-4
# fp16 graphs: their error to torch fp32 may be at most twice the error PyTorch itself
# makes in fp16 on the same inputs (the rule tests/kernels/test_triton_attention.py applies
# to the kernels; ORT's CPU provider runs fp16 graphs with fp32 casts around ops it has no
# fp16 kernel for; measured 0.2-1.05x on the tiny and small presets).
FP16_ERROR_FACTOR = 2.0
# bf16 graphs run upcast to fp32 on ORT (see the precision policy) against the module with
# its parameters rounded to bf16: they compute the same function, except for the scalar
# constants the trace wrote in bf16 (each off by up to 2^-9). So the graph may differ from
# the rounded module by at most half of what the rounding itself changes (measured up to
# 0.18x: the VAEs and the small preset's connector; 1e-2x or less elsewhere), or the fp32
# tolerance. A wrong graph (mask, RoPE, a dropped input) differs by far more than the
# rounding.
BF16_ROUNDING_FRACTION = 0.5
# weight-only graphs (INT4/INT8 weights, export/weight_only.py): 1 - cosine to torch fp32 at
# most twice that of the torch module with the same layers' weights rounded to nearest in
# the format (`emulate_rtn`), plus fp16's own loss; never under the recipe's floor. Relative,
# because mllm_text's check inputs are standard-normal embeddings (~50x real ones), which
# drown the weights' share of the output: every cosine is near 1. Measured on tiny's check
# cases, fp16: INT4 block 64 graph 0.9999972 vs rounded in torch 0.9999972 (gate
# 0.9999942), INT8 0.99999996 vs 0.99999999 (fp16's own loss, 1.2e-7, dominates; gate
# 0.9999997). It fails a graph whose weights are not dequantized (-0.006), whose scales sit
# on the wrong output columns (0.999984, which no absolute floor would catch), or an INT4
# graph recorded as INT8 (0.9999972 against 0.9999997).
WEIGHT_ONLY_ERROR_FACTOR = 2.0


class ExportError(RuntimeError):
    """An exported graph failed its check against PyTorch; no manifest was written."""


def validate(graph: Graph, models: Any, stage_dir: Path, manifest: Manifest,
             modules: tuple[torch.nn.Module, torch.nn.Module], cases: tuple[Case, ...],
             min_cosine: float | None, quantized: str = "FP8",
             emulated: torch.nn.Module | None = None) -> Validation:
    """The graph in `stage_dir` vs PyTorch on every check case; ExportError past the gate.

    `modules`: (`graph.module`, the module the graph was traced from: it cast to the
    export's dtype); `min_cosine`: the quantized graph's gate (its FP8 or weight-only
    recipe's), `quantized` the format the error message names; `emulated`: a weight-only
    graph's module with its weights rounded in torch (export/weight_only.emulate_rtn),
    whose cosine to torch fp32 tightens the gate (WEIGHT_ONLY_ERROR_FACTOR).
    """
    from .dtype import round_parameters

    compute, (module, traced) = manifest.compute_dtype, modules
    bf16 = compute == "bfloat16" and min_cosine is None
    # (reference, companion): the graph must match `reference`; how far `companion` is
    # from it scales the tolerance (None: the fixed fp32 tolerance)
    reference, companion = module, traced if compute == "float16" else None
    if bf16:
        reference, companion = round_parameters(module, torch.bfloat16), module
    outputs = graph.spec(models.config).output_names
    exported = manifest.stage_spec()
    with _graph_runner(stage_dir, manifest) as run:
        stats: list[ErrorStats] = []
        spread: list[ErrorStats] = []
        rounded: list[ErrorStats] = []
        for i, case in enumerate(cases):
            drawn = graph.sample_inputs(models.config, case, seed=CHECK_SEED + i)
            # inputs the graph takes in its compute dtype (the decoder's state) are rounded
            # to it; PyTorch gets the same values in float32
            inputs = {n: t.to(drawn[n].dtype)
                      for n, t in to_spec_dtypes(exported, drawn).items()}
            with torch.inference_mode():
                ref = _named(outputs, reference(**inputs))
                if companion is not None:
                    other = _named(outputs, companion(**inputs))
                    spread.extend(error_stats(other[n], ref[n]) for n in outputs)
                if emulated is not None:
                    other = _named(outputs, emulated(**inputs))
                    rounded.extend(error_stats(other[n], ref[n]) for n in outputs)
            got = run(inputs)
            # every output, each against its own scale: a graph's later outputs (the VAE
            # decoder's next states) are as much its result as the first
            stats.extend(error_stats(got[n], ref[n]) for n in outputs)
    # worst() pairs the largest error of any output with the smallest scale of any: for a
    # graph of several outputs (the VAE decoder's video and next states) a conservative
    # figure, never a lenient one
    checked = Validation(
        TORCH_FP32 + (" with parameters rounded to bf16" if bf16 else ""),
        "onnxruntime" + (", the graph upcast to float32" if compute == "bfloat16" else ""),
        tuple(dict(c) for c in cases), worst(stats), worst(spread) if spread else None,
        emulated=worst(rounded) if rounded else None)
    if min_cosine is not None:
        return _gate_cosine(graph.name, min_cosine, checked, quantized)
    return _gate_error(graph.name, compute, checked)


def _named(names: tuple[str, ...], outputs: Any) -> dict[str, torch.Tensor]:
    """A module's return value (a tensor or a tuple, in spec order) by output name."""
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    if len(outputs) != len(names):
        raise ExportError(f"the module returned {len(outputs)} outputs, the spec names "
                          f"{len(names)}: {list(names)}")
    return dict(zip(names, outputs, strict=True))


def _gate_cosine(name: str, min_cosine: float, checked: Validation, quantized: str
                 ) -> Validation:
    """A quantized graph's loss (FP8, INT4/INT8 weights) comes on top of fp16's own: their
    (1 - cosine) add up."""
    assert checked.error is not None
    spread, rounded = checked.spread, checked.emulated
    floor = min_cosine
    if rounded is not None:  # no more than WEIGHT_ONLY_ERROR_FACTOR x torch's own rounding
        min_cosine = max(min_cosine, 1 - WEIGHT_ONLY_ERROR_FACTOR * (1 - rounded.cosine))
    gate = min_cosine - (FP16_ERROR_FACTOR * (1 - spread.cosine) if spread else 0.0)
    if not checked.error.cosine >= gate:
        emulation = ("" if rounded is None else f"; its weights rounded in torch score "
                     f"{rounded.cosine:.5f}")
        raise ExportError(f"{name}: {quantized} graph has cosine {checked.error.cosine:.5f} "
                          f"to torch fp32, below the gate {gate:.5f} (the recipe's floor "
                          f"{floor}{emulation}); check its calibration or quantizer")
    return dataclasses.replace(checked, min_cosine=gate)


def _gate_error(name: str, compute: str, checked: Validation) -> Validation:
    assert checked.error is not None
    tolerance = FP32_TOLERANCE
    if checked.spread is not None:
        factor = FP16_ERROR_FACTOR if compute == "float16" else BF16_ROUNDING_FRACTION
        tolerance = max(tolerance, factor * checked.spread.rel_max)
    error = checked.error
    if not error.rel_max <= tolerance:
        raise ExportError(f"{name}: the {compute} graph differs from {checked.reference} by "
                          f"{error.max_abs:.3g} ({error.rel_max:.3g} of the output scale > "
                          f"{tolerance:.3g}); the graph is wrong, not imprecise")
    return dataclasses.replace(checked, tolerance=tolerance)


@contextmanager
def _graph_runner(stage_dir: Path, manifest: Manifest):
    """run(inputs) -> outputs of the graph being exported, on ONNX Runtime's CPU provider,
    each input cast to the graph's dtype for it; a bf16 graph is upcast to float32 first,
    in a temporary folder beside the export."""
    from .ort import CPU_PROVIDER, OrtRunner

    def runs(runner: OrtRunner):
        spec = runner.manifest.stage_spec()
        return lambda inputs: runner.run(to_spec_dtypes(spec, inputs))

    if manifest.compute_dtype != "bfloat16":
        yield runs(OrtRunner(stage_dir, providers=(CPU_PROVIDER,), manifest=manifest))
        return
    import onnx

    from .dtype import upcast_bfloat16
    from .onnx_graph import save_onnx

    with tempfile.TemporaryDirectory(dir=stage_dir, prefix=".upcast-") as folder:
        save_onnx(upcast_bfloat16(onnx.load(str(stage_dir / manifest.model_file))),
                  Path(folder) / manifest.model_file)
        inputs, outputs = _upcast_io(manifest)
        upcast = dataclasses.replace(manifest, compute_dtype="float32", inputs=inputs,
                                     outputs=outputs)
        yield runs(OrtRunner(folder, providers=(CPU_PROVIDER,), manifest=upcast))


def _upcast_io(manifest: Manifest
               ) -> tuple[tuple[TensorEntry, ...], tuple[TensorEntry, ...]]:
    """The manifest's (inputs, outputs) as `upcast_bfloat16` leaves them: bfloat16 I/O
    (the decoder's state) becomes float32."""
    def upcast(entries: tuple[TensorEntry, ...]) -> tuple[TensorEntry, ...]:
        return tuple(dataclasses.replace(e, dtype="float32") if e.dtype == "bfloat16" else e
                     for e in entries)
    return upcast(manifest.inputs), upcast(manifest.outputs)
