"""Graphs that compute in fp16/bf16 behind float32 inputs and outputs.

Engines run in the types their ONNX graph states (models/precision.py says why), so the
exporter writes half-precision graphs itself: the stage module is cast to fp16/bf16 and
wrapped so the graph's inputs and outputs stay float32, as every stage spec says (the
runners, the Triton configs and the sampler's fp32 latents are untouched; the boundary
casts cost one elementwise pass over inputs and outputs). The exception is what a graph
hands back to itself (the VAE decoder's chunk state, `Graph.exported_spec`): it crosses
in the compute dtype, so its outputs are cast to the dtypes that spec states.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import Precision, compute_dtype

if TYPE_CHECKING:
    import onnx

# the attribute CastedModule keeps the wrapped module under (`self.module`): traced layer
# paths gain it as a prefix ("module.blocks.0.attn.qkv") until `unwrap_scopes` removes it
CASTED_SCOPE = "module"


class CastedModule(nn.Module):
    """`module` in `dtype` behind a float32 interface: floating inputs are cast to `dtype`
    on the way in, floating outputs to float32 on the way out (or to `outputs`, each
    output's dtype, where given). Build it with `cast_module`, which gives forward the
    wrapped module's parameter names."""

    def __init__(self, module: nn.Module, dtype: torch.dtype,
                 outputs: tuple[torch.dtype, ...] | None = None):
        super().__init__()
        self.module = copy.deepcopy(module).to(dtype).eval()  # CASTED_SCOPE
        self.dtype = dtype
        self.outputs = outputs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        cast_args = [_cast(a, self.dtype) for a in args]
        kwargs = {k: _cast(v, self.dtype) for k, v in kwargs.items()}
        out = self.module(*cast_args, **kwargs)
        if isinstance(out, tuple):
            dtypes = self.outputs or (torch.float32,) * len(out)
            return tuple(_cast(o, d) for o, d in zip(out, dtypes, strict=True))
        return _cast(out, self.outputs[0] if self.outputs else torch.float32)


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def cast_module(module: nn.Module, precision: Precision,
                outputs: tuple[torch.dtype, ...] | None = None) -> nn.Module:
    """`module` itself for fp32, else a CastedModule copy in fp16/bf16; `outputs`: each
    output's dtype, the exported spec's (default: all float32).

    torch.export matches the stage spec's dynamic shapes to forward's parameter names, so
    the copy's class gets a forward whose signature is the wrapped module's.
    """
    if precision is Precision.FP32:
        return module
    signature = inspect.signature(module.forward)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def forward(self, *args, **kwargs):
        return CastedModule.forward(self, *args, **kwargs)

    # inspect reads __signature__; functions have no such declared attribute
    setattr(forward, "__signature__", signature.replace(  # noqa: B010
        parameters=[self_parameter, *signature.parameters.values()]))
    casted = type(f"Casted{type(module).__name__}", (CastedModule,), {"forward": forward})
    return casted(module, lookup(compute_dtype(precision)).torch, outputs).eval()


def unwrap_scopes(model: onnx.ModelProto) -> None:
    """Remove CastedModule's level from every node's module metadata (in place), so a
    half-precision graph names its layers as the fp32 graph does: the FP8 pass, profilers
    and tests see "blocks.0.attn.qkv", not "module.blocks.0.attn.qkv"."""
    from .onnx_graph import CLASSES_KEY, SCOPES_KEY, node_scopes

    prefix = f"{CASTED_SCOPE}."
    for node in model.graph.node:
        # scopes: ['', 'module', 'module.blocks', ...]; classes: [Casted*, CinemaDiT, ...]
        scopes, classes = node_scopes(node) or ([], [])
        if len(scopes) < 2 or scopes[1] != CASTED_SCOPE:
            continue
        meta = {p.key: p for p in node.metadata_props}
        meta[SCOPES_KEY].value = repr(["", *(s.removeprefix(prefix) for s in scopes[2:])])
        meta[CLASSES_KEY].value = repr(classes[1:])


def round_parameters(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A float32 copy of `module` whose floating parameters and buffers are rounded to
    `dtype`: the function a `dtype` graph computes, evaluated in float32 arithmetic."""
    rounded = copy.deepcopy(module).float().eval()
    with torch.no_grad():
        for tensor in (*rounded.parameters(), *rounded.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).float())
    return rounded


def upcast_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an ONNX model with every bfloat16 (initializers, constants, casts, value
    types) made float32: the same graph, run in float32 arithmetic. ONNX Runtime runs no
    bf16 graph (models/precision.py), so this is how a bf16 export's graph is checked there."""
    import numpy as np
    from onnx import AttributeProto, TensorProto, numpy_helper

    bf16, fp32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def upcast(tensor):
        if tensor.data_type != bf16:
            return tensor
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32),
                                       tensor.name)

    out = copy.deepcopy(model)
    graph = out.graph
    initializers = [upcast(t) for t in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    for value in (*graph.value_info, *graph.input, *graph.output):
        if value.type.tensor_type.elem_type == bf16:
            value.type.tensor_type.elem_type = fp32
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:  # Constant, ConstantOfShape
                attr.t.CopyFrom(upcast(attr.t))
            elif attr.type == AttributeProto.INT and attr.name in ("to", "dtype") \
                    and attr.i == bf16:  # Cast(to=...), EyeLike/Random*(dtype=...)
                attr.i = fp32
    return out
