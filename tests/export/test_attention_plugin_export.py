"""`export --attention-plugin`: the DiT graph carries the Triton kernel as TensorRT plugin
nodes; ORT cannot run it, so the manifest says its check was skipped instead of lying."""

import onnx
import pytest

from cinema_trt.export.driver import export_stages
from cinema_trt.export.manifest import read_manifest
from cinema_trt.export.onnx_graph import plugin_nodes


@pytest.mark.slow
def test_dit_exports_with_one_plugin_node_per_block(tiny_config, tmp_path):
    [result] = export_stages(tiny_config, tmp_path, stages=["dit"], progress=False,
                             attention_plugin=True)
    assert result.error is None
    assert read_manifest(tmp_path / "dit").validation.skipped
    nodes = plugin_nodes(onnx.load(str(tmp_path / "dit" / "model.onnx")))
    assert len(nodes) == tiny_config.dit.depth


def test_the_plugin_needs_half_precision_around_fp8(tiny_config, tmp_path):
    """A strongly typed FP8 build keeps the graph's types, and the plugin takes fp16/bf16:
    with --dtype fp32 the combination is refused before any work."""
    with pytest.raises(ValueError, match="attention_plugin with fp8 needs dtype fp16 or bf16"):
        export_stages(tiny_config, tmp_path, stages=["dit"], fp8=True, attention_plugin=True)
    assert not (tmp_path / "dit" / "manifest.json").exists()


@pytest.mark.slow
def test_fp8_dit_in_fp16_carries_the_plugin(tiny_config, tmp_path):
    """--fp8 --dtype fp16 --attention-plugin: FP8 GEMMs, fp16 elsewhere, the Triton kernel
    as plugin nodes fed fp16 tensors; the engine side accepts it for an fp8 build."""
    from cinema_trt.engines.config import BuildConfig, inspect_onnx, resolve_build_config

    [result] = export_stages(tiny_config, tmp_path, stages=["dit"], progress=False,
                             fp8=True, dtype="fp16", attention_plugin=True)
    model = onnx.load(str(tmp_path / "dit" / "model.onnx"))
    nodes = plugin_nodes(model)
    assert len(nodes) == tiny_config.dit.depth
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    integers = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}  # valid key lengths
    assert {types[name] for node in nodes for name in node.input if name in types} - \
        integers == {onnx.TensorProto.FLOAT16}
    graph = inspect_onnx(tmp_path / "dit" / "model.onnx")
    assert graph.has_fp8 and "float16" in graph.weight_types
    compute = read_manifest(tmp_path / "dit").compute_dtype
    assert compute == "float16"
    assert resolve_build_config(BuildConfig(precision="fp8"), graph, compute,
                                weak_typing=False).strongly_typed
