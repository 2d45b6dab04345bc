"""`export --dtype fp16|bf16`: graphs that compute in half precision behind float32 I/O,
checked against PyTorch in the same dtype, and FP8 graphs with fp16/bf16 outside Q/DQ.

Tolerances are derived, not guessed (export/check.py): an fp16 graph's error to torch fp32
may be at most twice the error PyTorch itself makes in fp16 on the same inputs; a bf16
graph, run upcast to fp32, may differ from the module with bf16-rounded parameters by at
most half of what that rounding changes.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import onnx
import pytest
import torch

from cinema_trt.engines.config import BuildConfig, inspect_onnx, resolve_build_config
from cinema_trt.export.check import BF16_ROUNDING_FRACTION, ExportError, validate
from cinema_trt.export.compare import error_stats
from cinema_trt.export.dtype import cast_module
from cinema_trt.export.fp8 import FP8_TYPE, linear_module
from cinema_trt.export.manifest import read_manifest
from cinema_trt.export.ort import OrtRunner, ort_runners
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.factory import build_models, torch_runners
from cinema_trt.models.pipeline import CinemaPipeline
from cinema_trt.models.precision import Precision
from cinema_trt.models.specs import to_spec_dtypes
from cinema_trt.models.stages import CONNECTOR, DIT, VAE_DECODER

log = logging.getLogger(__name__)


# the fp16, bf16 and FP8-on-fp16 exports of the whole preset take ~2 minutes on 2 cores
slow = pytest.mark.slow


def test_cast_module_keeps_the_interface_and_computes_in_half(tiny_models):
    dit = tiny_models.dit
    half = cast_module(dit, Precision.FP16)
    assert list(inspect.signature(half.forward).parameters) == \
        list(inspect.signature(dit.forward).parameters)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert dit.patch_embed.weight.dtype == torch.float32  # the original is untouched
    assert cast_module(dit, Precision.FP32) is dit
    inputs = DIT.sample_inputs(tiny_models.config, DIT.cases(tiny_models.config)[1][0])
    with torch.inference_mode():
        out, ref = half(**inputs), dit(**inputs)
    assert out.dtype == torch.float32
    stats = error_stats(out, ref)
    # fp16 rounding (~5e-4 per value) through the tiny DiT, but not equal
    assert 0 < stats.rel_l2 < 2e-2, stats


@slow
def test_fp16_export_states_its_types(fp16_export):
    """Weights in fp16, I/O in float32 (the stage specs') but for the VAE decoder's chunk
    state, which crosses in fp16 (`Graph.exported_spec`), opset 19, and the engine side
    reads it as an fp16 graph that builds strongly typed."""
    out, results = fp16_export
    for stage, result in results.items():
        manifest = read_manifest(out / stage)
        assert result.precision is Precision.FP16
        assert (manifest.precision, manifest.compute_dtype, manifest.opset) == \
            (Precision.FP16, "float16", 19)
        graph = inspect_onnx(out / stage / "model.onnx")
        assert "float16" in graph.weight_types, stage  # the weights the manifest describes
        # float32 behind the graph's casts; ids, masks and the decoder's `first` flag as is;
        # the decoder's states in fp16
        inputs, outputs = dict(graph.inputs), dict(graph.outputs)
        if stage == VAE_DECODER.name:
            states = [n for n in (*inputs, *outputs) if n.startswith(("state.", "next_state."))]
            assert states and {inputs.pop(n, None) or outputs.pop(n) for n in states} == \
                {"float16"}
        assert set(inputs.values()) <= {"float32", "int64", "bool"}, (stage, graph.inputs)
        assert set(outputs.values()) == {"float32"}
        # the manifest (what runners, builds and Triton configs read) says the same
        assert {e.name: e.dtype for e in (*manifest.inputs, *manifest.outputs)} == \
            {**graph.inputs, **graph.outputs}
        assert resolve_build_config(BuildConfig(precision="fp16"), graph,
                                    manifest.compute_dtype, weak_typing=False).strongly_typed


@slow
def test_fp16_graphs_match_torch_within_twice_torchs_fp16_error(fp16_export, tiny_models):
    """On a shape the exporter did not check (seed 7): |ORT fp16 - torch fp32| <= 2 x
    |torch fp16 - torch fp32|, plus the fp32 floor of 1e-4 of the output scale."""
    out, _ = fp16_export
    for g in (CONNECTOR, DIT, VAE_DECODER):
        stage, module = g.name, g.module(tiny_models)
        inputs = g.sample_inputs(tiny_models.config, g.cases(tiny_models.config)[1][1], seed=7)
        runner = OrtRunner(out / stage)
        # the decoder's states are fp16 inputs: every computation sees them rounded so
        graph_inputs = to_spec_dtypes(runner.manifest.stage_spec(), inputs)
        inputs = {n: t.to(inputs[n].dtype) for n, t in graph_inputs.items()}
        with torch.inference_mode():
            ref = _outputs(module(**inputs))
            same = _outputs(cast_module(module, Precision.FP16)(**inputs))
        got = runner.run(graph_inputs)
        # every output (the VAE decoder's next states too), each against its own
        for name, r, s in zip(g.spec(tiny_models.config).output_names, ref, same, strict=True):
            graph, torch_half = error_stats(got[name], r), error_stats(s, r)
            log.info("%s.%s fp16: graph %.2e, torch %.2e", stage, name, graph.rel_max,
                     torch_half.rel_max)
            assert graph.rel_max <= max(2 * torch_half.rel_max, 1e-4), (name, graph, torch_half)


def _outputs(value) -> tuple[torch.Tensor, ...]:
    return (value,) if isinstance(value, torch.Tensor) else tuple(value)


@slow
def test_fp16_pipeline_on_ort_matches_torch(fp16_export, tiny_models, request_and_reference,
                                            psnr):
    """Every stage fp16 on ONNX Runtime against the torch fp32 video: >= 59 dB.

    Measured 60.6-61.2 dB over 6 seeds x 2 prompts
    (benchmarks/results/fidelity-tiny-20261129.json); another prompt moves the video to
    56.4-58.7 dB, other references to 50.9-52.0, one reference fewer to 49.2-51.4. 59 dB,
    1.6 under the worst, fails a pipeline that loses a reference or a stage (~14 dB), and
    one that loses the prompt on all but the closest of them; the stage gates (2x torch's
    own fp16 error) catch what is left."""
    request, reference = request_and_reference
    runners = ort_runners(fp16_export[0])
    assert set(runners) == set(torch_runners(tiny_models))
    video = CinemaPipeline(tiny_models.config, runners, tiny_models.processor).generate(request)
    value = psnr(video, reference)
    log.info("fp16 ORT pipeline PSNR vs torch fp32: %.1f dB", value)
    assert value >= 59.0


@slow
def test_a_half_graph_that_computes_something_else_is_refused(fp16_export, tiny_config):
    """The gate can fail: the exported fp16 connector judged against other weights."""
    out, _ = fp16_export
    other = build_models(tiny_config, seed=1)  # the export used seed 0
    module, checks = CONNECTOR.module(other), CONNECTOR.cases(tiny_config)[1]
    manifest = read_manifest(out / CONNECTOR.name)
    with pytest.raises(ExportError, match="float16 graph differs from torch fp32"):
        validate(CONNECTOR, other, out / CONNECTOR.name, manifest,
                 (module, cast_module(module, Precision.FP16)), checks, None)


@slow
def test_bf16_export_is_opset_22_and_checked_upcast(bf16_export, tiny_models):
    """opset 19's Conv takes no bfloat16, so bf16 graphs are opset 22. ORT's CPU provider
    has no bf16 kernels: the exporter ran the graph upcast to fp32 against the module with
    bf16-rounded parameters (far closer than the rounding itself moves the module), and
    OrtRunner refuses the bf16 graph with the fix instead of failing inside ORT."""
    out, results = bf16_export
    # the stages whose bf16 rounding moves the output well above the 1e-4 floor; the tiny
    # mllm_text moves by only 9.9e-5 (measured), so its gate is the floor itself
    for stage in ("connector", "dit", "vae_decoder"):
        result = results[stage]
        manifest = read_manifest(out / stage)
        assert (manifest.precision, manifest.compute_dtype, manifest.opset) == \
            (Precision.BF16, "bfloat16", 22)  # opset 22: bf16 Conv
        assert "bfloat16" in inspect_onnx(out / stage / "model.onnx").weight_types
        validation = manifest.validation
        assert validation.reference == "torch fp32 with parameters rounded to bf16"
        assert validation.error.rel_max <= validation.tolerance == pytest.approx(max(
            1e-4, BF16_ROUNDING_FRACTION * validation.spread.rel_max))
        assert validation.spread.rel_max > 1e-3, stage  # bf16 rounding is visible
        assert result.error.rel_max == validation.error.rel_max
    assert not list(out.glob("*/.upcast-*"))  # the temporary fp32 graphs are gone
    with pytest.raises(ValueError, match="no bfloat16 kernels.*--dtype fp16"):
        OrtRunner(out / "dit")


@slow
def test_a_bf16_graph_that_computes_something_else_is_refused(bf16_export, tiny_config):
    out, _ = bf16_export
    other = build_models(tiny_config, seed=1)  # the export used seed 0
    module, checks = DIT.module(other), DIT.cases(tiny_config)[1]
    with pytest.raises(ExportError, match="bfloat16 graph differs from torch fp32 with "
                                          "parameters rounded to bf16"):
        validate(DIT, other, out / DIT.name, read_manifest(out / DIT.name),
                 (module, cast_module(module, Precision.BF16)), checks, None)


@slow
def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def fp8_gemm_layers(model: onnx.ModelProto) -> dict[str, int]:
    """{layer: GEMM count} of Linear GEMMs whose activation comes through an FP8
    Quantize->Dequantize pair and whose weight is a dequantized FLOAT8E4M3FN initializer."""
    producers = _producers(model.graph)
    fp8_inits = {t.name for t in model.graph.initializer if t.data_type == FP8_TYPE}
    zero_points = {t.name for t in model.graph.initializer if t.data_type == FP8_TYPE
                   and not t.dims}
    layers: dict[str, int] = {}
    for node in model.graph.node:
        layer = linear_module(node)
        if layer is None:
            continue
        act, weight = producers.get(node.input[0]), producers.get(node.input[1])
        quant = None
        if act is not None and act.op_type == "DequantizeLinear":
            quant = producers.get(act.input[0])
        act_fp8 = quant is not None and quant.op_type == "QuantizeLinear" \
            and len(quant.input) == 3 and quant.input[2] in zero_points
        weight_fp8 = weight is not None and weight.op_type == "DequantizeLinear" \
            and weight.input[0] in fp8_inits
        if act_fp8 and weight_fp8:
            layers[layer] = layers.get(layer, 0) + 1
    return layers


def test_fp8_on_fp16_quantizes_the_same_layers_with_fp16_scales(fp8_fp16_export, fp8_export):
    """FP8 with --dtype fp16: the recipe's layers as in the fp32 FP8 export, scales in
    float16 (Q/DQ take the activation's type), everything outside Q/DQ in fp16, and the
    accuracy gate passes (it adds fp16's own loss to the recipe's)."""
    out, results = fp8_fp16_export
    assert results["dit"].precision is Precision.FP8
    model = onnx.load(str(out / "dit" / "model.onnx"))
    fp32_fp8 = onnx.load(str(fp8_export[0] / "dit" / "model.onnx"))
    assert fp8_gemm_layers(model) == fp8_gemm_layers(fp32_fp8) != {}
    scales = [t for t in model.graph.initializer if t.name.endswith("_fp8_scale")]
    assert scales and {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
    graph = inspect_onnx(out / "dit" / "model.onnx")
    assert "float16" in graph.weight_types and graph.qdq_types == {"float8e4m3fn"}
    manifest = read_manifest(out / "dit")
    assert manifest.compute_dtype == "float16"
    assert manifest.quantization["compute_dtype"] == "float16"
    assert manifest.validation.error.cosine >= manifest.validation.min_cosine
    # the fp32 FP8 export's layer record is the same set of layers (no "module." prefix)
    assert set(manifest.quantization["layers"]) == \
        set(read_manifest(fp8_export[0] / "dit").quantization["layers"])


def test_fp16_scales_never_flush_to_zero():
    """A tiny amax (1e-6) would give an fp16 scale of 2e-9, which is 0 in fp16: the scale is
    held at fp16's smallest normal number instead, so Q never divides by zero."""
    from cinema_trt.export.fp8 import _QDQBuilder

    graph = onnx.helper.make_graph([], "g", [], [])
    builder = _QDQBuilder(graph, lookup("float16").numpy)
    scale = builder._scale(np.asarray(1e-6 / 448, np.float32))
    assert scale.dtype == np.float16 and scale == np.finfo(np.float16).tiny
    assert _QDQBuilder(graph, lookup("float32").numpy)._scale(
        np.asarray(1e-9, np.float32)) == np.float32(1e-9)


def test_upcast_makes_every_bfloat16_float32():
    """Initializers, Constant values, Cast targets and value types: the upcast graph is the
    same computation in fp32 (0.7 stays its bf16 value, 0.69921875), which ORT's CPU
    provider runs where it refuses the bf16 original."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cinema_trt.export.dtype import upcast_bfloat16

    bf16, fp32 = TensorProto.BFLOAT16, TensorProto.FLOAT
    scale = helper.make_tensor("scale", bf16, [], [0.7])
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=bf16),
             helper.make_node("Constant", [], ["two"], value=helper.make_tensor(
                 "two", bf16, [], [2.0])),
             helper.make_node("Mul", ["xb", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "two"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=fp32)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", fp32, [3])],
                              [helper.make_tensor_value_info("y", fp32, [3])], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model = onnx.shape_inference.infer_shapes(model)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|Could not find an implementation"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    upcast = upcast_bfloat16(model)
    onnx.checker.check_model(upcast, full_check=True)
    assert all(t.data_type == fp32 for t in upcast.graph.initializer)
    assert all(v.type.tensor_type.elem_type != bf16 for v in upcast.graph.value_info)
    session = ort.InferenceSession(upcast.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.array([1.0, -2.0, 3.0], np.float32)
    [y] = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, x * np.float32(0.69921875) + 2.0)
    assert model.graph.initializer[0].data_type == bf16  # the original is untouched
