"""The ONNX side of the Triton attention plugins: custom nodes TensorRT's ONNX parser maps to
the plugins registered by kernels/trt_plugin.py. Needs onnxscript only, no TensorRT.

`onnx_translation_table()` is for `torch.onnx.export(..., custom_translation_table=...)`:
each `torch.ops.cinema.attention*` node becomes a custom ONNX node whose op type is the
plugin name, with a `plugin_namespace` attribute (how TensorRT's ONNX parser finds a plugin
in its registry) and `aot=1` where an ahead-of-time kernel exists (kernels/plugin_aot.py).
"""

from __future__ import annotations

PLUGIN_NAMESPACE = "cinema"
ATTENTION_PLUGIN = "triton_attention"
ATTENTION_INT8_PLUGIN = "triton_attention_int8"
PLUGIN_VERSION = "1"
# TensorRT matches plugins by op type + plugin_namespace; the domain only keeps the node out
# of the default ONNX namespace (which has its own "Attention" since opset 23). "trt.plugins"
# is the domain ONNX Runtime's TensorRT provider uses for TensorRT plugins.
ONNX_DOMAIN = "trt.plugins"


def _plugin_op(name: str, attributes: dict[str, str]):
    """An onnxscript op for plugin `name`: q, k, v (type T), kv_lens int32 -> out (T)."""
    import onnxscript
    from onnx.defs import OpSchema

    kinds = {"string": OpSchema.AttrType.STRING, "int": OpSchema.AttrType.INT,
             "float": OpSchema.AttrType.FLOAT}
    schema = OpSchema(
        name, ONNX_DOMAIN, 1,
        inputs=[OpSchema.FormalParameter(n, "T") for n in ("q", "k", "v")]
        + [OpSchema.FormalParameter("kv_lens", "tensor(int32)")],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", ["tensor(float16)", "tensor(bfloat16)", "tensor(float)"], "")],
        attributes=[OpSchema.Attribute(a, kinds[kind], "") for a, kind in attributes.items()])
    return onnxscript.values.Op(onnxscript.values.Opset(ONNX_DOMAIN, 1), name, schema)


def _full_lengths(k):
    """(B,) int32 of S_kv, built in-graph so it follows dynamic batch and sequence sizes."""
    from onnxscript import opset18 as op

    seq = op.Shape(k, start=2, end=3)
    batch = op.Shape(k, start=0, end=1)
    return op.Cast(op.Expand(seq, batch), to=6)  # 6: INT32


def onnx_translation_table() -> dict:
    """{custom op overload: onnxscript translation} for `torch.onnx.export`."""
    import torch

    from . import ops  # noqa: F401  registers torch.ops.cinema.*

    common = {"plugin_namespace": "string", "plugin_version": "string", "aot": "int",
              "scale": "float"}
    fp_op = _plugin_op(ATTENTION_PLUGIN, common)
    int8_op = _plugin_op(ATTENTION_INT8_PLUGIN, {**common, "q_block": "int", "k_block": "int",
                                                 "smooth_k": "int"})

    def attention(q, k, v, kv_lens, q_norm_weight, k_norm_weight, rope_cos, rope_sin,
                  scale, eps):
        if any(t is not None for t in (q_norm_weight, k_norm_weight, rope_cos, rope_sin)):
            raise ValueError("the TensorRT attention plugin has no fused RMS-norm/RoPE prologue; "
                             "apply them in the graph before exporting (QKPrologue=None)")
        lens = _full_lengths(k) if kv_lens is None else kv_lens
        return fp_op(q, k, v, lens, plugin_namespace=PLUGIN_NAMESPACE,
                     plugin_version=PLUGIN_VERSION, aot=1, scale=scale)

    def attention_int8(q, k, v, kv_lens, scale, q_block, k_block, smooth_k):
        lens = _full_lengths(k) if kv_lens is None else kv_lens
        return int8_op(q, k, v, lens, plugin_namespace=PLUGIN_NAMESPACE,
                       plugin_version=PLUGIN_VERSION, aot=0, scale=scale, q_block=q_block,
                       k_block=k_block, smooth_k=int(smooth_k))

    return {torch.ops.cinema.attention.default: attention,
            torch.ops.cinema.attention_int8.default: attention_int8}
