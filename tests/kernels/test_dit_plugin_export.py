"""The DiT exported with its attention as TensorRT plugin nodes, and the engine build's view.

CPU tier: the tiny DiT is traced once (about 30 s on 2 loaded cores, hence `slow`) with
`DIT.module(..., plugin=True)` and `trace_to_onnx(..., attention_plugin=True)`,
saved, and put through the exporter's strict shape inference and full checker. ONNX
Runtime cannot run the graph (it has no `trt.plugins` kernels); only TensorRT with
`register_plugins()` can, which needs a GPU and is not verified here.
"""

from __future__ import annotations

import collections
import importlib.util

import onnx
import onnxruntime as ort
import pytest
import torch

from cinema_trt.engines.artifacts import prepare_build
from cinema_trt.engines.config import (
    BuildConfig,
    OnnxGraphInfo,
    Precision,
    inspect_onnx,
    resolve_build_config,
)
from cinema_trt.engines.exported import ExportedStage
from cinema_trt.engines.manifest import RuntimeInfo
from cinema_trt.engines.shapes import shapes_from_dict
from cinema_trt.engines.trt_build import key_plugin_kernels, register_graph_plugins
from cinema_trt.export.onnx_graph import check_onnx, plugin_nodes, save_onnx, trace_to_onnx
from cinema_trt.kernels import plugin_onnx, trt_plugin
from cinema_trt.models.attention import attention
from cinema_trt.models.factory import build_models
from cinema_trt.models.presets import get_preset
from cinema_trt.models.specs import StageSpec, TensorSpec
from cinema_trt.models.stages import DIT

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
H100 = RuntimeInfo("tensorrt", "10.8.0", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def plugin_dit(tmp_path_factory):
    """(models, the plugin DiT module, path of the saved and checked plugin graph)."""
    models = build_models(get_preset("tiny"))
    module = DIT.module(models, plugin=True).eval()
    example = DIT.sample_inputs(models.config, DIT.cases(models.config)[0])
    model = trace_to_onnx(module, DIT.spec(models.config), example, attention_plugin=True)
    path = tmp_path_factory.mktemp("plugin") / "dit" / "model.onnx"
    path.parent.mkdir()
    (saved,) = save_onnx(model, path)
    check_onnx(saved)  # strict shape inference + full checker, as the exporter runs them
    return models, module, saved


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.slow
def test_dit_graph_has_one_plugin_node_per_block_in_place_of_attention(plugin_dit):
    models, module, path = plugin_dit
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dit = models.config.dit
    nodes = plugin_nodes(model)
    assert len(nodes) == dit.depth
    for node in nodes:
        assert node.op_type == plugin_onnx.ATTENTION_PLUGIN
        assert _attrs(node) == {"plugin_namespace": b"cinema", "plugin_version": b"1", "aot": 1,
                                "scale": pytest.approx(dit.head_dim ** -0.5)}
        assert len(node.input) == 4 and len(node.output) == 1  # q, k, v, kv_lens -> out
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Softmax"] == 0  # no attention subgraph is left beside the plugins
    # the prologue stays in the graph: per block, RMS-norms of q and k in both streams (one
    # ReduceMean each; LayerNorm is its own op) and the visual q, k rotations (one Neg each)
    assert ops["ReduceMean"] == 4 * dit.depth and ops["Neg"] == 2 * dit.depth
    assert {o.domain: o.version for o in model.opset_import}[plugin_onnx.ONNX_DOMAIN] == 1
    assert [i.name for i in model.graph.input] == list(DIT.spec(models.config).input_names)
    assert [o.name for o in model.graph.output] == list(DIT.spec(models.config).output_names)


@pytest.mark.slow
def test_plugin_export_leaves_the_models_dit_alone(plugin_dit):
    models, module, _ = plugin_dit
    assert DIT.attention_plugin
    assert module.cfg.attention_backend == "triton_unfused"
    assert models.dit.cfg.attention_backend == "sdpa"
    assert module.proj_out.weight.data_ptr() == models.dit.proj_out.weight.data_ptr()


@pytest.mark.slow
def test_onnx_runtime_cannot_run_the_plugin_graph(plugin_dit):
    with pytest.raises(Exception, match=plugin_onnx.ATTENTION_PLUGIN):
        ort.InferenceSession(str(plugin_dit[2]), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_engine_build_marks_the_graph_as_needing_the_plugins(plugin_dit, tmp_path,
                                                             stage_manifest):
    models, _, path = plugin_dit
    config = models.config
    # the exporter's record of this hand-traced graph (fp32, like the graph)
    stage = ExportedStage(path.parent, stage_manifest(path.parent, config))
    build = prepare_build(stage, tmp_path / "dit", shapes_from_dict({}, config),
                          BuildConfig(), H100)
    assert build.graph.trt_plugins == {plugin_onnx.ATTENTION_PLUGIN}
    # the engine embeds the compiled kernels, so their fingerprint joins the cache key
    assert key_plugin_kernels(build).cache_key != build.cache_key
    if not HAS_TENSORRT:
        with pytest.raises(trt_plugin.TensorRTUnavailableError):
            register_graph_plugins(build.graph)


def test_a_plain_graph_needs_no_plugins(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    info = inspect_onnx(path)
    assert info.trt_plugins == frozenset()
    assert register_graph_plugins(info) is False  # returns before touching TensorRT


def _graph(plugins=("triton_attention",), qdq=False) -> OnnxGraphInfo:
    return OnnxGraphInfo(has_qdq=qdq, qdq_types=frozenset({"float8e4m3fn"} if qdq else ()),
                         weight_types=frozenset(), trt_plugins=frozenset(plugins))


def test_plugin_graphs_build_in_half_precision_only():
    # weakly typed fp16/bf16: TensorRT reformats the fp32 graph's tensors around the plugin
    for precision in (Precision.FP16, Precision.BF16):
        assert not resolve_build_config(BuildConfig(precision=precision), _graph(),
                                        "float32").strongly_typed
    with pytest.raises(ValueError, match="fp16/bf16 only; build with --precision fp16"):
        resolve_build_config(BuildConfig(precision=Precision.FP32), _graph(), "float32")
    # strongly typed (FP8 Q/DQ) builds keep the graph's fp32 plugin inputs
    with pytest.raises(ValueError, match="export with --dtype fp16 or bf16"):
        resolve_build_config(BuildConfig(precision=Precision.FP8), _graph(qdq=True), "float32")
    # ... unless the export computes in half precision (export --dtype fp16 --fp8)
    assert resolve_build_config(BuildConfig(precision=Precision.FP8), _graph(qdq=True),
                                "float16").strongly_typed
    resolve_build_config(BuildConfig(precision=Precision.FP32), _graph(plugins=()), "float32")


class _SelfAttention(torch.nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, x):  # (B, S, 32) -> two heads of 16
        heads = x.unflatten(-1, (2, 16)).transpose(1, 2)  # (B, H, S, D)
        return attention(heads, heads, heads, self.backend).transpose(1, 2).flatten(2)


_SPEC = StageSpec("toy", (TensorSpec("x", torch.float32, ("batch", "seq", 32)),),
                  (TensorSpec("y", torch.float32, ("batch", "seq", 32)),))


def test_plugin_export_of_a_module_without_the_custom_op_fails_with_the_fix():
    example = {"x": torch.randn(2, 5, 32)}
    model = trace_to_onnx(_SelfAttention("triton_unfused").eval(), _SPEC, example,
                          attention_plugin=True)
    assert len(plugin_nodes(model)) == 1
    with pytest.raises(ValueError, match="attention backend 'triton_unfused'"):
        trace_to_onnx(_SelfAttention("sdpa").eval(), _SPEC, example, attention_plugin=True)
