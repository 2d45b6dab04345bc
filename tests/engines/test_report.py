"""Engine reports from the builder's log: real lines of TensorRT-RTX 1.7.1.116's layer
list (the tiny FP8 DiT built for sm89+sm120), parsed and summarized."""

from __future__ import annotations

from cinema_trt.engines.config import OnnxGraphInfo
from cinema_trt.engines.report import (
    LayerRow,
    format_summary,
    parse_layer_line,
    parse_layers,
    parse_memory,
    summarize,
)

# copied from the builder's "Layers:" message (metadata entries are joined by \x1f)
FP8_GEMM = ('Name: node_MatMul_395_myl0_9, LayerType: gemm, Inputs: [ { Name: add_537_fp8_q.1_m'
    'yl0, Dimensions: [8,32], Strides: [32,1], StrideOrder: [1,0], Datatype: FP8, Forma'
    't: (Linear) Row major linear format }], Constants: [ { Name: __mye39328_dconst_myl'
    '0, Dimensions: [32,96], Strides: [96,1], StrideOrder: [1,0], Datatype: FP8, Format'
    ': (Linear) Row major linear format }, { Name: __mye37295node_MatMul_395_alpha_myl0'
    ', Dimensions: [1], Strides: [1], StrideOrder: [0], Datatype: Float, Format: (Linea'
    'r) Row major linear format }, { Name: __mye37296node_MatMul_395_beta_myl0, Dimensi'
    'ons: [1], Strides: [1], StrideOrder: [0], Datatype: Float, Format: (Linear) Row ma'
    'jor linear format }], Outputs: [ { Name: __myln_k_arg__bb1_19_myl0, Dimensions: [8'
    ',96], Strides: [96,1], StrideOrder: [1,0], Datatype: Half, Format: (Linear) Row ma'
    'jor linear format }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: [ONNX'
    ' Layer: node_MatMul_395]\x1f[ONNX Layer: add_537_DequantizeLinear]\x1f[ONNX Layer: val_3'
    '98_DequantizeLinear]')
FUSED_MHA = ('Name: _gemm_mha_v2_myl0_46, LayerType: kgen, Inputs: [ { Name: __mye40062_66_myl0,'
    ' Dimensions: [4,20,16], Strides: [16,64,1], StrideOrder: [1,2,0], Datatype: Half, '
    'Format: (Arbitrary) Format with stride order = [1,2,0] }, { Name: __mye40062_63_my'
    'l0, Dimensions: [4,16,20], Strides: [16,1,64], StrideOrder: [1,0,2], Datatype: Hal'
    'f, Format: (Arbitrary) Format with stride order = [1,0,2] }, { Name: __mye40062_60'
    '_myl0, Dimensions: [4,20,16], Strides: [16,64,1], StrideOrder: [1,2,0], Datatype: '
    'Half, Format: (Arbitrary) Format with stride order = [1,2,0] }], Constants: [], Ou'
    'tputs: [ { Name: __mye40062_myl0, Dimensions: [4,20,16], Strides: [16,64,1], Strid'
    'eOrder: [1,2,0], Datatype: FP8, Format: (Arbitrary) Format with stride order = [1,'
    '2,0] }], TacticName: _gemm_mha_v2_0x81975b9b2976503248a36f24d8fadadb, StreamId: 0,'
    ' Metadata: [ONNX Layer: slice_39_QuantizeLinear]\x1f[ONNX Layer: node_scaled_dot_prod'
    'uct_attention_1]\x1f[ONNX Layer: node_Softmax_677]\x1f[ONNX Layer: node_MatMul_676]')
SHAPE_CALL = ("Name: __mye51445_myl0_2, LayerType: signal, Inputs: [], Constants: [], "
              "Outputs: [], TacticName: , StreamId: 0, EventId: 1, Metadata: ")
MEMORY = ["Total Host Persistent Memory: 80 bytes", "Total Device Persistent Memory: 0 bytes",
          "Max Scratch Memory: 8326144 bytes", "Total Activation Memory: 8326144 bytes",
          "Total Weights Memory: 109184 bytes"]


def test_an_fp8_gemm_reads_fp8_activations_and_weights():
    row = parse_layer_line(FP8_GEMM)
    assert (row.name, row.kind, row.tactic) == ("node_MatMul_395_myl0_9", "gemm",
                                                "__myelin_CASK_STUB")
    assert row.inputs == ("float8e4m3fn",) and row.outputs == ("float16",)
    assert row.weights == ("float8e4m3fn",)  # the fp32 alpha/beta scalars are left out
    assert row.compute_dtype == "float8e4m3fn" and not row.fused_attention
    assert row.onnx_nodes == ("node_MatMul_395", "add_537_DequantizeLinear",
                              "val_398_DequantizeLinear")


def test_a_fused_attention_kernel_is_recognised_and_computes_in_fp16():
    row = parse_layer_line(FUSED_MHA)
    assert row.fused_attention and row.kind == "kgen"
    assert row.inputs == ("float16",) * 3 and row.outputs == ("float8e4m3fn",)
    assert row.compute_dtype == "float16"  # it writes FP8 for the next GEMM, reads fp16
    assert "node_Softmax_677" in row.onnx_nodes


def test_layers_come_from_the_layer_message_up_to_its_io_list():
    message = "\n".join(["Layers:", SHAPE_CALL, FP8_GEMM, FUSED_MHA, "", "I/O Tensors:",
                         " Name: latents, IOMode: Input, DataType: Float"])
    rows = parse_layers(["Engine generation completed", message, "Adding 1 engine(s)"])
    assert [r.kind for r in rows] == ["signal", "gemm", "kgen"]
    assert rows[0].onnx_nodes == () and rows[0].compute_dtype == "none"
    assert parse_layers(["no layer list in this log"]) == []


def test_memory_figures_in_bytes():
    assert parse_memory(["Engine generation completed", *MEMORY]) == {
        "host_persistent_bytes": 80, "device_persistent_bytes": 0,
        "max_scratch_bytes": 8326144, "activation_bytes": 8326144, "weights_bytes": 109184}


def _graph(attention=("node_Softmax_440", "node_Softmax_677"),
           linears=("node_MatMul_395",)) -> OnnxGraphInfo:
    return OnnxGraphInfo(True, frozenset({"float8e4m3fn"}), frozenset({"float16"}),
                         attention_nodes=attention, quantized_linears=linears)


def test_summary_names_the_attention_left_unfused():
    rows = [parse_layer_line(FP8_GEMM), parse_layer_line(FUSED_MHA)]
    report = summarize(rows, parse_memory(MEMORY), _graph())
    assert report["attention"] == {"onnx": 2, "fused_layers": 1,
                                   "unfused": ["node_Softmax_440"]}
    assert report["quantized_linears"] == {"onnx": 1, "by_precision": {"float8e4m3fn": 1},
                                           "not_low_precision": []}
    assert report["by_kind"] == {"gemm": 1, "kgen": 1}
    assert report["by_precision"] == {"float16": 1, "float8e4m3fn": 1}
    assert "UNFUSED ['node_Softmax_440']" in format_summary("dit", report)


def test_a_quantized_linear_left_in_fp16_is_named():
    fp16_gemm = LayerRow("gemm_0", "gemm", "", ("float16",), ("float16",), ("float16",),
                         ("node_MatMul_395",))
    report = summarize([fp16_gemm], {}, _graph(attention=()))
    assert report["quantized_linears"]["not_low_precision"] == ["node_MatMul_395"]
    assert report["quantized_linears"]["by_precision"] == {"float16": 1}


def test_tensorrt_10_layer_lines_spell_types_in_their_format():
    """TensorRT 10's DETAILED layer list writes "Format/Datatype: Int32" or a format
    sentence (the line's shape as NVIDIA/TensorRT issue #4397 shows it, TensorRT 10.10)."""
    line = ("Name: __myl_GathMulAdd_myl0_0, LayerType: kgen, Inputs: [ { Name: pos_ids, "
            "Dimensions: [1,40], Format/Datatype: Int32 }, { Name: x, Dimensions: [1,40,64], "
            "Format/Datatype: Row major linear FP16 format }], Outputs: [ { Name: y, "
            "Dimensions: [1,40,64], Format/Datatype: Half }], TacticName: __myl_GathMulAdd_0x1, "
            "StreamId: 0, Metadata: [ONNX Layer: /embeddings/Gather]")
    row = parse_layer_line(line)
    assert row.inputs == ("int32", "float16") and row.outputs == ("float16",)
    assert row.weights == () and row.compute_dtype == "float16"
    assert row.onnx_nodes == ("/embeddings/Gather",)
