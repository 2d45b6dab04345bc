"""Weight-only INT4 mllm_text through ModelOpt's ONNX quantizer (export/weight_only.py):
the graph format TensorRT-RTX builds, and its error against torch fp32 at measured levels.

What the gates mean. Each compares the final hidden states of ONNX Runtime on the INT4
graph with the torch fp32 module on held-out prompts (embeddings of random in-vocabulary
ids), as cosine. They bound INT4's rounding on *these* weights; they are not a quality
claim for Qwen2-VL-7B, whose weights no test has. Measured (RTN, benchmarks/results/
cpu-2core-weight-only-*.md):
- tiny, random weights, block 32: 0.99664 (fp16 graph alone: 0.99999995). Gate 0.993: twice
  the measured 1 - cosine. Catches a graph that dequantizes a layer wrongly: one layer's
  scales off by 2x gives 0.962-0.988 (test_a_wrong_scale_fails_the_gate).
- INT8 per channel, tiny: 0.999982; gate 0.99996 (twice the measured 1 - cosine).
- trained weights and paper width: test_weight_only_models.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from cinema_trt.export.weight_only import (
    INT4,
    INT4_OPSET,
    WeightOnlyConfig,
    linear_gemms,
    quantize_weight_only,
    quantized_gemms,
)
from cinema_trt.models.mllm_split import text_calibration

pytestmark = pytest.mark.slow  # the fp16 mllm_text export (~45 s), shared with the engine suites

TINY_GATE = 0.993
INT8_GATE = 0.99996  # INT8 per channel, tiny: measured 0.999982
TINY_BLOCK = 32  # tiny's hidden width is 64: ModelOpt's default of 128 would not fit


@pytest.fixture(scope="module")
def modelopt(require):
    return require("modelopt.onnx.quantization", 'pip install -e ".[quant]"')


@pytest.fixture(scope="module")
def fp16_text(tiny_exports):
    folder, _ = tiny_exports.folder(["mllm_text"], dtype="fp16")
    return folder / "mllm_text" / "model.onnx"


@pytest.fixture(scope="module")
def embeddings(tiny_models):
    return tiny_models.mllm.model.language_model.embed_tokens.weight.detach()


@pytest.fixture(scope="module")
def int4_text(modelopt, fp16_text, embeddings, tmp_path_factory):
    calibration = [text_calibration(embeddings, 1, 64, seed=s) for s in range(2)]
    out = tmp_path_factory.mktemp("int4") / "model.onnx"
    return quantize_weight_only(fp16_text, out, calibration,
                                WeightOnlyConfig(method="rtn_dq", block_size=TINY_BLOCK))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def agreement(tiny_models, embeddings):
    """agreement(graph path or ModelProto) -> cosine to torch fp32 on held-out prompts."""
    import onnxruntime as ort
    import torch

    from cinema_trt.models.stage_mllm import MLLM_TEXT

    inputs = text_calibration(embeddings, 2, 97, seed=100)
    with torch.no_grad():
        reference = MLLM_TEXT.module(tiny_models)(
            **{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()

    def measure(graph) -> float:
        source = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        return cosine(session.run(None, inputs)[0], reference)

    return measure


def test_every_linear_reads_signed_int4_blocks(int4_text, fp16_text):
    source = onnx.load(str(fp16_text))
    model = onnx.load(str(int4_text.path))
    assert set(int4_text.quantized) == set(linear_gemms(source).values())
    assert len(int4_text.quantized) == 14  # q, k, v, o, gate, up, down x 2 layers
    assert set(quantized_gemms(model).values()) == {(4, TINY_BLOCK)}
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= INT4_OPSET
    for node in model.graph.node:
        assert node.domain in ("", "ai.onnx"), f"non-standard op {node.domain}.{node.op_type}"
    int4 = {t.name: t for t in model.graph.initializer if t.data_type == INT4}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in int4]
    assert len(dequantize) == 14
    for node in dequantize:  # symmetric: no zero point (UINT4 with one does not parse)
        assert len(node.input) == 2
        assert {a.name: a.i for a in node.attribute}["axis"] == 0
    before, after = int4_text.weight_bytes
    assert after < 0.35 * before  # measured 0.29x of the fp16 graph's initializers


def test_int4_graph_matches_torch_at_the_measured_level(int4_text, agreement, fp16_text):
    assert agreement(fp16_text) > 0.99999
    assert agreement(int4_text.path) >= TINY_GATE


@pytest.mark.parametrize("layer", ["language_model.layers.0.self_attn.v_proj",
                                   "language_model.layers.1.mlp.down_proj"])
def test_a_wrong_scale_fails_the_gate(int4_text, fp16_text, agreement, layer):
    """One layer's scales doubled (the size of a packing or scale-dtype bug) fails the
    gate: measured 0.962 (v_proj) and 0.988 (down_proj). Not on q_proj/k_proj: the tiny
    random model's attention is nearly uniform, so their scale hardly matters (0.99699)."""
    from onnx import numpy_helper

    gemm = next(n for n, path in linear_gemms(onnx.load(str(fp16_text))).items()
                if path == layer)
    model = onnx.load(str(int4_text.path))
    weight = next(n for n in model.graph.node if n.name == gemm).input[1]
    dequantize = next(n for n in model.graph.node if n.output[0] == weight)
    scale = next(t for t in model.graph.initializer if t.name == dequantize.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    assert agreement(model) < TINY_GATE


def test_excluded_layers_stay_in_float(modelopt, fp16_text, embeddings, tmp_path):
    calibration = [text_calibration(embeddings, 1, 32)]
    result = quantize_weight_only(
        fp16_text, tmp_path / "model.onnx", calibration,
        WeightOnlyConfig(method="rtn_dq", block_size=TINY_BLOCK, exclude=(r".*\.down_proj",)))
    assert sorted(result.excluded) == [f"language_model.layers.{i}.mlp.down_proj"
                                       for i in range(2)]
    assert not set(result.excluded) & set(result.quantized) and len(result.quantized) == 12


def test_int8_weights_are_per_channel_and_close(modelopt, fp16_text, embeddings, agreement,
                                                tmp_path):
    """bits=8: every Linear INT8 with one scale per output column (0.53x of fp16)."""
    result = quantize_weight_only(fp16_text, tmp_path / "model.onnx",
                                  [text_calibration(embeddings, 1, 32)],
                                  WeightOnlyConfig(method="rtn_dq", bits=8))
    assert len(result.quantized) == 14
    assert set(quantized_gemms(onnx.load(str(result.path))).values()) == {(8, 0)}
    assert agreement(result.path) >= INT8_GATE


def test_bad_settings_raise(fp16_text, embeddings, tmp_path):
    with pytest.raises(ValueError, match="method='int3'"):
        WeightOnlyConfig(method="int3")
    with pytest.raises(ValueError, match="block_size=100"):
        WeightOnlyConfig(block_size=100)
    with pytest.raises(ValueError, match="bits=3"):
        WeightOnlyConfig(bits=3)
    with pytest.raises(ValueError, match="the graph takes"):
        quantize_weight_only(fp16_text, tmp_path / "m.onnx", [{"input_ids": np.zeros(1)}])


def test_tensorrt_rtx_builds_the_int4_weights_for_sm89(require, int4_text, fp16_text):
    """The builder keeps the INT4 weights (measured 43,660 bytes vs 148,352 for the fp16
    graph: 0.29x) and computes 10 layers from INT4 weights."""
    require("tensorrt_rtx", 'pip install -e ".[test]"')
    from cinema_trt.benchmarks.weight_only import rtx_build_memory, text_profiles

    profiles = text_profiles(1, (1, 64, 256), 64)
    fp16 = rtx_build_memory(fp16_text, profiles)
    int4 = rtx_build_memory(int4_text.path, profiles)
    assert int4["layers_by_precision"].get("int4", 0) >= 7  # a GEMM may fuse with others
    assert int4["weights_bytes"] < 0.35 * fp16["weights_bytes"]
