"""FP8 PTQ: the recipe picks the right layers, the graph has FLOAT8E4M3FN Q/DQ exactly
there, ONNX Runtime CPU runs it, it matches the torch emulation of the recipe tightly and
stays close to fp32."""

from __future__ import annotations

import logging

import onnx
import pytest
import torch

from cinema_trt.export.compare import error_stats
from cinema_trt.export.fp8 import FP8_TYPE, AmaxObserver, emulate_fp8, insert_fp8_qdq, linear_module
from cinema_trt.export.manifest import MODEL_FILE, Precision, read_manifest
from cinema_trt.export.ort import OrtRunner
from cinema_trt.models.stages import CONNECTOR, DIT, FP8_GRAPHS, graph

log = logging.getLogger(__name__)


def _recipe(stage: str):
    return graph(stage).recipes[Precision.FP8]


def test_dit_recipe_quantizes_block_linears_only(tiny_models):
    recipe = DIT.recipes[Precision.FP8]
    layers = recipe.layers(tiny_models.dit)
    assert "blocks.0.text.qkv" in layers and "blocks.1.visual.mlp.2" in layers
    assert len(layers) == 2 * 4 * tiny_models.config.dit.depth  # 2 streams x qkv/out/mlp x2
    assert set(recipe.excluded(tiny_models.dit)) == {
        "patch_embed", "text_proj", "time_mlp.0", "time_mlp.2", "out_modulation", "proj_out",
        *(f"blocks.{i}.{s}.modulation" for i in range(2) for s in ("text", "visual"))}


def test_amax_observer_records_max_abs_input(tiny_models):
    aligner = tiny_models.aligner
    inputs = CONNECTOR.sample_inputs(tiny_models.config, {"batch": 2, "seq": 11})
    with AmaxObserver(aligner, ["input_proj"]) as observer, torch.inference_mode():
        aligner(**inputs)
        aligner(**{k: v[:1] for k, v in inputs.items()})  # a smaller second call
    valid = inputs["hidden_states"].masked_fill(inputs["attention_mask"][..., None] == 0, 0)
    expected = aligner.input_norm(valid).abs().max().item()
    assert observer.amax["input_proj"] == pytest.approx(expected, rel=1e-6)
    assert observer.calls["input_proj"] == 2
    aligner(**inputs)  # hooks are gone after the block
    assert observer.calls["input_proj"] == 2


def _producers(graph):
    return {out: node for node in graph.node for out in node.output}


@pytest.mark.slow
@pytest.mark.parametrize("stage", FP8_GRAPHS)
def test_graph_has_fp8_qdq_around_recipe_layers_only(stage, fp8_export, tiny_models):
    proto = onnx.load(str(fp8_export[0] / stage / MODEL_FILE)).graph
    module = graph(stage).module(tiny_models)
    wanted, excluded = set(_recipe(stage).layers(module)), set(_recipe(stage).excluded(module))
    producers = _producers(proto)
    fp8_weights = {t.name: t for t in proto.initializer if t.data_type == FP8_TYPE}
    zero_points = {t.name for t in proto.initializer if t.data_type == FP8_TYPE and not t.dims}
    seen_fp8, seen_plain = set(), set()
    for node in proto.node:
        layer = linear_module(node)
        if layer is None:
            continue
        act, weight = producers.get(node.input[0]), producers.get(node.input[1])
        if act is None or act.op_type != "DequantizeLinear":
            assert weight is None or weight.op_type != "DequantizeLinear", layer
            seen_plain.add(layer)
            continue
        quant = producers[act.input[0]]
        assert quant.op_type == "QuantizeLinear" and quant.input[2] in zero_points, layer
        assert weight.op_type == "DequantizeLinear" and weight.input[0] in fp8_weights, layer
        seen_fp8.add(layer)
    assert seen_fp8 <= wanted and seen_plain <= excluded
    assert seen_plain == excluded  # every excluded layer is in the graph, unquantized
    # the graph drops layers feeding nothing (the last DiT block's text stream)
    assert len(seen_fp8) >= len(wanted) - 3 and seen_fp8
    # weights are stored in FP8: one E4M3 element per quantized weight element
    modules = dict(module.named_modules())
    assert sum(int(torch.tensor(list(t.dims)).prod()) for t in fp8_weights.values()
               if t.dims) == sum(modules[n].weight.numel() for n in seen_fp8)


@pytest.mark.slow
@pytest.mark.parametrize("stage", FP8_GRAPHS)
def test_fp8_graph_runs_on_ort_close_to_fp32(stage, fp8_export, tiny_models):
    """Gate: cosine to torch fp32 >= the recipe's min_cosine (models/stage.py; measured dit
    0.99996, connector 0.9966, mllm_text 0.99999) and rel L2 < 0.15 (measured 0.005-0.009,
    0.08, 0.0006). The error must also be clearly non-zero (rel L2 > 1e-4), or the graph is
    not really computing in FP8."""
    g = graph(stage)
    module, output = g.module(tiny_models).eval(), g.spec(tiny_models.config).output_names[0]
    runner = OrtRunner(fp8_export[0] / stage)
    for seed, case in enumerate(g.cases(tiny_models.config)[1]):
        inputs = g.sample_inputs(tiny_models.config, case, seed=seed)
        with torch.inference_mode():
            ref = module(**inputs)
        stats = error_stats(runner.run(inputs)[output], ref)
        log.info("%s FP8 vs fp32 at %s: cosine %.6f, rel L2 %.4f", stage, case, stats.cosine,
                 stats.rel_l2)
        assert stats.cosine >= _recipe(stage).min_cosine, stats
        assert 1e-4 < stats.rel_l2 < 0.15, stats


@pytest.mark.slow
@pytest.mark.parametrize("stage", FP8_GRAPHS)
def test_fp8_graph_matches_torch_emulation(stage, fp8_export, tiny_models):
    """ORT on the Q/DQ graph vs the recipe emulated in torch with the manifest's amax:
    rel L2 <= 1e-5 (measured ~5e-7: fp32 GEMM rounding only), 100x below the FP8 error."""
    manifest = read_manifest(fp8_export[0] / stage)
    assert manifest.precision is Precision.FP8
    amax = manifest.quantization["layers"]
    assert amax and all(v > 0 for v in amax.values())
    g = graph(stage)
    module, output = g.module(tiny_models).eval(), g.spec(tiny_models.config).output_names[0]
    runner = OrtRunner(fp8_export[0] / stage)
    inputs = g.sample_inputs(tiny_models.config, g.cases(tiny_models.config)[1][1])
    with torch.inference_mode(), emulate_fp8(module, amax):
        emulated = module(**inputs)
    got = runner.run(inputs)[output]
    assert error_stats(got, emulated).rel_l2 <= 1e-5


@pytest.mark.slow
def test_graph_without_module_metadata_is_refused(fp32_export):
    """An fp32 graph labelled fp8 would be worse than an error."""
    model = onnx.load(str(fp32_export[0] / "connector" / MODEL_FILE))
    layers = {linear_module(n) for n in model.graph.node} - {None}
    for node in model.graph.node:
        del node.metadata_props[:]
    with pytest.raises(RuntimeError, match="module metadata"):
        insert_fp8_qdq(model, {layer: 1.0 for layer in layers})
