"""Fixtures: a tiny stage with the connector's I/O contract, exported in the exporter's layout.

The module is small on purpose (the real AlignerNet is exported and tested in export/); it
has the connector's tensor names and symbolic dims so engines see a realistic stage, and
every input changes the output (masked tokens are excluded from the pooling).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import CONNECTOR


class TinyConnector(nn.Module):
    """Learned queries attend over the (masked) hidden states, then project to out_dim."""

    def __init__(self, in_dim: int, num_queries: int, out_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, in_dim))
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # (B, Q, S) scores; masked tokens get a large negative score
        scores = torch.einsum("qd,bsd->bqs", self.queries, hidden_states)
        scores = scores / hidden_states.shape[-1] ** 0.5
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e4)
        pooled = torch.softmax(scores, dim=-1) @ hidden_states  # (B, Q, D)
        return self.proj(torch.tanh(pooled))  # (B, Q, out_dim)


def export_connector(module: nn.Module, folder: Path, config, stage_manifest,
                     dtype: str = "fp32") -> Path:
    """Export `module` as `<folder>/connector/model.onnx` + the exporter's manifest, computing
    in `dtype` behind float32 I/O (export/dtype.py)."""
    from torch.export import Dim

    from cinema_trt.export.dtype import cast_module
    from cinema_trt.models.precision import compute_dtype, parse_dtype

    precision = parse_dtype(dtype)
    module = cast_module(module, precision)

    stage_dir = folder / "connector"
    stage_dir.mkdir(parents=True)
    spec = CONNECTOR.spec(config)
    hidden = torch.randn(1, 7, config.aligner.in_dim)
    mask = torch.ones(1, 7, dtype=torch.int64)
    seq = Dim("seq", min=1, max=4096)
    onnx_path = stage_dir / "model.onnx"
    torch.onnx.export(module, (hidden, mask), str(onnx_path), dynamo=True,
                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                      dynamic_shapes={"hidden_states": {1: seq}, "attention_mask": {1: seq}})
    stage_manifest(stage_dir, config, precision=precision, compute_dtype=compute_dtype(precision))
    return onnx_path


@pytest.fixture(scope="session")
def tiny():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def connector_export(tmp_path_factory, tiny, stage_manifest):
    """(export folder, torch module): the tiny connector exported once per session."""
    torch.manual_seed(0)
    module = TinyConnector(tiny.aligner.in_dim, tiny.aligner.num_queries,
                           tiny.aligner.out_dim).eval()
    folder = tmp_path_factory.mktemp("onnx")
    export_connector(module, folder, tiny, stage_manifest)
    return folder, module


@pytest.fixture(scope="session")
def connector_export_fp16(tmp_path_factory, connector_export, tiny, stage_manifest):
    """(export folder, fp32 torch module): the same connector exported with --dtype fp16,
    the graph TensorRT 10 and 11 both build as an fp16 engine (strongly typed)."""
    folder = tmp_path_factory.mktemp("onnx_fp16")
    export_connector(connector_export[1], folder, tiny, stage_manifest, dtype="fp16")
    return folder, connector_export[1]


# --- an FP8 Q/DQ graph with the connector's I/O, and its PyTorch reference --------------

FP8_SCALE_X, FP8_SCALE_W = 0.02, 0.01  # |x / scale| stays far below E4M3's max of 448


def fake_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Quantize to FP8 E4M3 and back, as QuantizeLinear/DequantizeLinear with zero point 0."""
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


def fp8_connector_reference(weights: dict[str, torch.Tensor], hidden_states: torch.Tensor,
                            attention_mask: torch.Tensor) -> torch.Tensor:
    """What `export_fp8_connector`'s graph computes, in PyTorch (fp32 outside the Q/DQ)."""
    x = fake_fp8(hidden_states, FP8_SCALE_X)
    scores = torch.einsum("qd,bsd->bqs", weights["queries"], x) / 8.0
    scores = scores + (1 - attention_mask.float())[:, None, :] * -1e4
    pooled = torch.softmax(scores, dim=-1) @ hidden_states  # (B, Q, D)
    return fake_fp8(pooled, FP8_SCALE_X) @ fake_fp8(weights["proj"], FP8_SCALE_W)


def export_fp8_connector(folder: Path, config, stage_manifest,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """`<folder>/connector/model.onnx` with FP8 Q/DQ on the token and output matmuls, written
    with onnx.helper in the exporter's layout; returns the weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper


    a = config.aligner
    generator = torch.Generator().manual_seed(seed)
    weights = {"queries": torch.randn(a.num_queries, a.in_dim, generator=generator),
               "proj": torch.randn(a.in_dim, a.out_dim, generator=generator) * 0.2}
    fp8 = TensorProto.FLOAT8E4M3FN

    def qdq(name, scale):
        return [helper.make_node("QuantizeLinear", [name, scale, "zero8"], [name + "_q"]),
                helper.make_node("DequantizeLinear", [name + "_q", scale, "zero8"],
                                 [name + "_dq"])]

    inits = [numpy_helper.from_array(w.numpy(), n) for n, w in weights.items()]
    inits += [helper.make_tensor("sx", TensorProto.FLOAT, [], [FP8_SCALE_X]),
              helper.make_tensor("sw", TensorProto.FLOAT, [], [FP8_SCALE_W]),
              helper.make_tensor("zero8", fp8, [], [0]),
              helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
              helper.make_tensor("neg", TensorProto.FLOAT, [], [-1e4]),
              helper.make_tensor("inv_sqrt_d", TensorProto.FLOAT, [], [1 / 8.0]),
              helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    nodes = [*qdq("hidden_states", "sx"),
             helper.make_node("Transpose", ["hidden_states_dq"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["queries", "xt"], ["raw"]),  # (B, Q, S)
             helper.make_node("Mul", ["raw", "inv_sqrt_d"], ["scaled"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "maskf"], ["masked"]),
             helper.make_node("Mul", ["masked", "neg"], ["bias2d"]),
             helper.make_node("Unsqueeze", ["bias2d", "axis1"], ["bias"]),  # (B, 1, S)
             helper.make_node("Add", ["scaled", "bias"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "hidden_states"], ["pooled"]),
             *qdq("pooled", "sx"), *qdq("proj", "sw"),
             helper.make_node("MatMul", ["pooled_dq", "proj_dq"], ["text_states"])]
    graph = helper.make_graph(nodes, "fp8_connector", [
        helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT,
                                      ["batch", "seq", a.in_dim]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ], [helper.make_tensor_value_info("text_states", TensorProto.FLOAT,
                                      ["batch", a.num_queries, a.out_dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    stage_dir = folder / "connector"
    stage_dir.mkdir(parents=True)
    onnx.save(model, str(stage_dir / "model.onnx"))
    # fp32 outside the Q/DQ pairs (the default compute dtype)
    stage_manifest(stage_dir, config, opset=19, precision="fp8")
    return weights


@pytest.fixture(scope="session")
def fp8_connector_graph(tmp_path_factory, tiny, stage_manifest):
    """(folder, weights, reference function) of the hand-written FP8 Q/DQ connector graph
    (not the exporter's FP8 export, which is the root conftest's `fp8_export`)."""
    folder = tmp_path_factory.mktemp("onnx_fp8")
    return folder, export_fp8_connector(folder, tiny, stage_manifest), fp8_connector_reference
