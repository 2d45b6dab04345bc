"""Build config -> TensorRT flags (as names), strong typing derived from the export: the
compute dtype its manifest records (passed here as the exporter would record it for each
hand-made graph) and the graph's Q/DQ nodes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cinema_trt.engines.config import (
    BuildConfig,
    Precision,
    inspect_onnx,
    network_flags,
    ort_optimization_level,
    resolve_build_config,
    trt_flags,
)
from cinema_trt.models.backends import ORT, TENSORRT


def _matmul_graph(path, qdq: str | None = None, weight_dtype=np.float32) -> str:
    """x (B, 8) @ W (8, 4) -> y, optionally with x passed through a Q/DQ pair first."""
    weight = numpy_helper.from_array(np.ones((8, 4), weight_dtype), "W")
    nodes, inits, source = [], [weight], "x"
    if weight_dtype != np.float32:
        nodes.append(helper.make_node("Cast", ["x"], ["x_cast"], to=TensorProto.FLOAT16))
        source = "x_cast"
    if qdq is not None:
        zp_type = {"fp8": TensorProto.FLOAT8E4M3FN, "int8": TensorProto.INT8}[qdq]
        scale_type = TensorProto.FLOAT16 if weight_dtype != np.float32 else TensorProto.FLOAT
        inits += [helper.make_tensor("scale", scale_type, [], [0.5]),
                  helper.make_tensor("zero", zp_type, [], [0])]
        nodes += [helper.make_node("QuantizeLinear", [source, "scale", "zero"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"])]
        source = "xdq"
    nodes.append(helper.make_node("MatMul", [source, "W"], ["y"]))
    out_type = TensorProto.FLOAT16 if weight_dtype != np.float32 else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 8])], [helper.make_tensor_value_info(
            "y", out_type, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def test_plain_graph_is_weakly_typed_and_precision_picks_the_flag(tmp_path):
    graph = inspect_onnx(_matmul_graph(tmp_path / "plain.onnx"))
    assert not graph.has_qdq
    assert graph.inputs == {"x": "float32"} and graph.outputs == {"y": "float32"}
    expected = {Precision.FP32: [], Precision.FP16: ["FP16"], Precision.BF16: ["BF16"]}
    for precision, flags in expected.items():
        config = resolve_build_config(BuildConfig(precision=precision), graph, "float32")
        assert not config.strongly_typed
        assert network_flags(config) == []
        assert trt_flags(config) == flags


@pytest.mark.parametrize("kind, qdq_type", [("fp8", "float8e4m3fn"), ("int8", "int8")])
def test_qdq_graph_is_strongly_typed_without_precision_flags(tmp_path, kind, qdq_type):
    graph = inspect_onnx(_matmul_graph(tmp_path / f"{kind}.onnx", qdq=kind,
                                       weight_dtype=np.float16))
    assert graph.has_qdq and graph.qdq_types == {qdq_type}
    precision = Precision.FP8 if kind == "fp8" else Precision.FP16
    config = resolve_build_config(BuildConfig(precision=precision), graph, "float16")
    assert config.strongly_typed
    assert network_flags(config) == ["STRONGLY_TYPED"]
    # a strongly typed network takes its types from the graph: no FP16/BF16/FP8 flags
    assert trt_flags(config) == []


def test_fp8_needs_an_fp8_qdq_graph(tmp_path):
    plain = inspect_onnx(_matmul_graph(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="precision=fp8 needs an ONNX graph with FP8"):
        resolve_build_config(BuildConfig(precision="fp8"), plain, "float32")
    int8 = inspect_onnx(_matmul_graph(tmp_path / "int8.onnx", qdq="int8"))
    with pytest.raises(ValueError, match=r"found Q/DQ types \['int8'\]"):
        resolve_build_config(BuildConfig(precision="fp8"), int8, "float32")


def test_fp8_graph_must_be_built_as_fp8(tmp_path):
    graph = inspect_onnx(_matmul_graph(tmp_path / "fp8.onnx", qdq="fp8"))
    with pytest.raises(ValueError, match="build it with --precision fp8"):
        resolve_build_config(BuildConfig(precision="fp32"), graph, "float32")


def test_fp16_on_a_strongly_typed_float32_graph_is_refused(tmp_path):
    graph = inspect_onnx(_matmul_graph(tmp_path / "int8.onnx", qdq="int8"))
    with pytest.raises(ValueError, match="precision=fp16 has no effect on this float32 graph"
                                         r".*Q/DQ nodes.*export --dtype fp16"):
        resolve_build_config(BuildConfig(precision="fp16"), graph, "float32")


def test_half_graph_builds_strongly_typed_in_its_own_type(tmp_path):
    """An export with --dtype fp16 states its types: no builder flags, precision must
    agree, and the answer is the same with or without weak typing (TensorRT 10 or 11)."""
    graph = inspect_onnx(_matmul_graph(tmp_path / "half.onnx", weight_dtype=np.float16))
    for weak_typing in (True, False):
        config = resolve_build_config(BuildConfig(precision="fp16"), graph, "float16",
                                      weak_typing)
        assert config.strongly_typed
        assert network_flags(config) == ["STRONGLY_TYPED"] and trt_flags(config) == []
    for other in ("fp32", "bf16"):
        with pytest.raises(ValueError, match=f"precision={other} does not match the export, "
                                             r"which computes in float16.*--precision fp16"):
            resolve_build_config(BuildConfig(precision=other), graph, "float16")


def test_without_weak_typing_an_fp32_graph_builds_only_fp32(tmp_path):
    """TensorRT 11 removed BuilderFlag.FP16/BF16: an fp32 graph is strongly typed there,
    so fp16 must come from the export."""
    graph = inspect_onnx(_matmul_graph(tmp_path / "plain.onnx"))
    config = resolve_build_config(BuildConfig(precision="fp32"), graph, "float32",
                                  weak_typing=False)
    assert config.strongly_typed and trt_flags(config) == []
    with pytest.raises(ValueError, match=r"TensorRT >= 11 and TensorRT-RTX build nothing else.*"
                                         r"export --dtype bf16"):
        resolve_build_config(BuildConfig(precision="bf16"), graph, "float32", weak_typing=False)


def test_weak_typing_is_tensorrt_10_only():
    assert TENSORRT.weak_typing("10.13.3.9")
    assert not TENSORRT.weak_typing("11.4.0.106")
    assert ORT.weak_typing("1.32.0")  # no typing mode: the TensorRT rule does not apply


def test_fp8_graph_in_half_precision_is_fp8(tmp_path):
    """An FP8 export with --dtype fp16: Q/DQ types from the FP8 weights' DequantizeLinear
    (a two-input DQ, no zero point) too, and fp8 is the only precision that builds it."""
    graph = inspect_onnx(_fp8_weight_graph(tmp_path / "fp8w.onnx"))
    assert graph.qdq_types == {"float8e4m3fn"}
    config = resolve_build_config(BuildConfig(precision="fp8"), graph, "float16",
                                  weak_typing=False)
    assert config.strongly_typed and trt_flags(config) == []
    with pytest.raises(ValueError, match="build it with --precision fp8"):
        resolve_build_config(BuildConfig(precision="fp16"), graph, "float16")


def _fp8_weight_graph(path) -> str:
    """x (fp16) @ DequantizeLinear(W8, scale) with an FP8 weight and an fp16 scale."""
    import ml_dtypes

    weight = numpy_helper.from_array(np.ones((8, 4), ml_dtypes.float8_e4m3fn), "W8")
    scale = numpy_helper.from_array(np.full(4, 0.5, np.float16), "W_scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float16), "b")
    nodes = [helper.make_node("DequantizeLinear", ["W8", "W_scale"], ["W"], axis=1),
             helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT16, ["batch", 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT16, ["batch", 4])], [weight, scale, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def test_weight_streaming_forces_strong_typing(tmp_path):
    graph = inspect_onnx(_matmul_graph(tmp_path / "plain.onnx"))
    config = resolve_build_config(BuildConfig(precision="fp32", weight_streaming=True), graph,
                                  "float32")
    assert config.strongly_typed
    assert trt_flags(config) == ["WEIGHT_STREAMING"]
    with pytest.raises(ValueError, match="weight streaming needs a strongly typed network"):
        trt_flags(BuildConfig(precision="fp32", weight_streaming=True))


def test_refit_flag():
    assert trt_flags(BuildConfig(precision="bf16", refittable=True)) == ["BF16", "REFIT"]


def test_unresolved_fp8_config_cannot_be_translated():
    with pytest.raises(ValueError, match="call resolve_build_config"):
        trt_flags(BuildConfig(precision="fp8"))


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "int4"}, "precision='int4' is not supported"),
    ({"workspace_gib": 0}, "workspace_gib=0 must be in"),
    ({"optimization_level": 6}, "optimization_level=6 must be in 0..5"),
])
def test_invalid_build_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BuildConfig(**kwargs)


def test_cache_fields_leave_out_the_timing_cache_path():
    a = BuildConfig(timing_cache="/tmp/a.cache").cache_fields()
    b = BuildConfig(timing_cache="/elsewhere/b.cache").cache_fields()
    assert a == b and "timing_cache" not in a
    assert BuildConfig(timing_cache="/tmp/a.cache").to_dict()["timing_cache"] == "/tmp/a.cache"


def test_ort_levels_follow_the_tensorrt_scale():
    names = [ort_optimization_level(BuildConfig(optimization_level=level))
             for level in range(6)]
    assert names == ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED",
                     "ORT_ENABLE_ALL", "ORT_ENABLE_ALL", "ORT_ENABLE_ALL"]
