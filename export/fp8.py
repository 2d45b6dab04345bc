"""FP8 (E4M3) post-training quantization, emitted as standard ONNX Q/DQ (opset 19).

The recipe is NVIDIA ModelOpt's FP8 PTQ for diffusion transformers. Calibration can run
through ModelOpt itself (`calibrator="modelopt"` in export/calibration.py: `mtq.quantize`
with this recipe as its config; nvidia-modelopt 0.47 installs without touching torch and
its max calibration runs on CPU) or through the built-in observer below, which gives the
same amax and is the default. The graph pass is ours either way: ModelOpt's torch export
emits fake-quant through TorchScript-exporter symbolics into TensorRT-domain FP8 ops,
which the dynamo exporter used here does not take, so the calibrated amax are written as
standard ONNX Q/DQ by `insert_fp8_qdq`. The recipe, written out:

- activations: per-tensor amax from max calibration over real pipeline runs (every
  sampler step of a few prompts, both CFG branches), scale = amax / 448;
- weights: per-output-channel amax, scale = amax / 448, stored as FLOAT8E4M3FN
  initializers (4x smaller than fp32) followed by DequantizeLinear;
- which layers: every nn.Linear of the stage except the recipe's exclusions (embeddings,
  patchify, final projections, the timestep MLP and adaLN modulation); norms, attention
  BMMs and softmax stay in higher precision.

The graph pattern is `x -> QuantizeLinear -> DequantizeLinear -> MatMul/Gemm <- DQ <- W8`,
which TensorRT fuses into FP8 GEMMs and ONNX Runtime's CPU provider runs as written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import Precision, policy, precision_for

from .onnx_graph import node_scopes

FP8_MAX = 448.0  # largest finite float8 E4M3FN value
FP8_E4M3_BITS = (4, 3)  # (exponent, mantissa) bits: ModelOpt's `num_bits` for E4M3
FP8_TYPE = lookup(policy(Precision.FP8).quantized).onnx
_MIN_AMAX = 1e-8  # an all-zero input still gets a finite scale


def activation_scale(amax: float) -> np.float32:
    """Per-tensor activation scale, as stored in the graph."""
    return np.float32(max(amax, _MIN_AMAX) / FP8_MAX)


class AmaxObserver:
    """Max calibration: records max |input| of named Linear layers while active.

    with AmaxObserver(module, names) as observer: run the pipeline; observer.amax
    """

    def __init__(self, module: nn.Module, names: list[str]):
        modules = dict(module.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no layers {missing} in {type(module).__name__}")
        self._targets = {n: modules[n] for n in names}
        self._handles: list = []
        self.amax: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def _hook(self, name: str):
        def record(_module, args):
            value = float(args[0].detach().abs().max())
            self.amax[name] = max(self.amax.get(name, 0.0), value)
            self.calls[name] = self.calls.get(name, 0) + 1
        return record

    def __enter__(self) -> AmaxObserver:
        self._handles = [m.register_forward_pre_hook(self._hook(n))
                         for n, m in self._targets.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def check_complete(self) -> None:
        unseen = sorted(set(self._targets) - set(self.amax))
        if unseen:
            raise RuntimeError(f"calibration never ran layers {unseen}; the calibration "
                               f"requests do not exercise the whole stage")


def _qdq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear(saturate=1) then DequantizeLinear, in torch."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


@contextmanager
def emulate_fp8(module: nn.Module, amax: dict[str, float]) -> Iterator[nn.Module]:
    """Run `module` in torch with the FP8 graph's arithmetic on the layers in `amax`:
    inputs and weights quantize-dequantized with the same scales as `insert_fp8_qdq`.

    The torch reference of an FP8 export: ORT on the FP8 graph must match this to fp32
    rounding (plus the rare value that lands on an FP8 rounding boundary), a far tighter
    check than the FP8-vs-fp32 error, which on small random models hides a wrong scale.
    """
    modules = dict(module.named_modules())
    handles, saved = [], {}
    try:
        for name, value in amax.items():
            linear = modules[name]
            scale = torch.tensor(activation_scale(value))
            handles.append(linear.register_forward_pre_hook(
                lambda _m, args, s=scale: (_qdq(args[0], s), *args[1:])))
            weight = linear.weight.data
            saved[name] = weight
            # torch weights are (out, in): per-output-channel amax over dim 1
            w_scale = torch.from_numpy(np.maximum(weight.abs().amax(1, keepdim=True).numpy(),
                                                  _MIN_AMAX) / np.float32(FP8_MAX))
            linear.weight.data = _qdq(weight, w_scale.to(weight.dtype))
        yield module
    finally:
        for handle in handles:
            handle.remove()
        for name, weight in saved.items():
            modules[name].weight.data = weight


# --- graph side ---------------------------------------------------------------------------


def linear_module(node: onnx.NodeProto) -> str | None:
    """The nn.Linear module path a MatMul/Gemm node was traced from, else None.

    torch.onnx's dynamo exporter records, per node, the module scopes (`name_scopes`, full
    paths) and classes (`class_hierarchy`) it was traced in; a Linear's GEMM is the node
    whose innermost op is aten.linear inside a Linear module.
    """
    recorded = node_scopes(node)
    if node.op_type not in ("MatMul", "Gemm") or recorded is None:
        return None
    scopes, classes = recorded
    if len(classes) >= 2 and classes[-1].startswith("aten.linear") \
            and classes[-2].endswith(".Linear"):
        return scopes[-2]
    return None


def _fp8_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(float8 weight, float32 per-channel scales) with amax/448 scaling along `axis`."""
    import ml_dtypes  # an onnx dependency: numpy's float8 types

    reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
    amax = np.maximum(np.abs(weight).max(axis=reduce_axes), _MIN_AMAX)
    scale = (amax / FP8_MAX).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    # clip: E4M3FN has no inf, and a value rounding past 448 would become NaN
    scaled = np.clip(weight / scale.reshape(shape), -FP8_MAX, FP8_MAX)
    return scaled.astype(ml_dtypes.float8_e4m3fn), scale


def _weight_axis(node: onnx.NodeProto, rank: int) -> int:
    """The output-channel axis of a GEMM's weight: (in, out) for MatMul and plain Gemm,
    (out, in) for Gemm with transB=1."""
    if rank != 2:
        raise ValueError(f"{node.name}: FP8 weights must be 2-D, got rank {rank}")
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if node.op_type == "Gemm" and trans_b else 1


class _QDQBuilder:
    """Adds Q/DQ nodes and FP8 initializers to a graph, sharing them where possible."""

    def __init__(self, graph: onnx.GraphProto, dtype: np.dtype):
        self.graph = graph
        self.dtype = dtype  # of the scales: Q/DQ's scale type is the activation's type
        self.initializers = {t.name: t for t in graph.initializer}
        self.new_nodes: dict[str, list[onnx.NodeProto]] = {}  # consumer node name -> nodes
        self._activations: dict[tuple[str, float], str] = {}
        self._weights: dict[str, str] = {}
        self.zero = "fp8_zero_point"
        graph.initializer.append(helper.make_tensor(self.zero, FP8_TYPE, [], [0]))

    def _scale(self, scale: np.ndarray) -> np.ndarray:
        """`scale` in the graph's type, at least its smallest normal number: an fp16 scale
        below 6.1e-5 (amax < 0.027) would lose bits or flush to zero and divide by it. A
        larger scale only leaves the lowest FP8 exponents unused; Q and DQ share it, so
        rounding the scale itself costs nothing."""
        import ml_dtypes  # its finfo knows bfloat16 too

        tiny = ml_dtypes.finfo(self.dtype).tiny if self.dtype != np.float32 else 0.0
        return np.maximum(scale.astype(np.float32), np.float32(tiny)).astype(self.dtype)

    def activation(self, consumer: str, name: str, amax: float) -> str:
        key = (name, amax)
        if key not in self._activations:
            scale = f"{name}_fp8_scale"
            self.graph.initializer.append(numpy_helper.from_array(
                self._scale(np.asarray(activation_scale(amax))), scale))
            quantized, out = f"{name}_fp8_q", f"{name}_fp8_dq"
            self.new_nodes.setdefault(consumer, []).extend([
                helper.make_node("QuantizeLinear", [name, scale, self.zero], [quantized],
                                 name=f"{name}_QuantizeLinear", saturate=1),
                helper.make_node("DequantizeLinear", [quantized, scale], [out],
                                 name=f"{name}_DequantizeLinear")])
            self._activations[key] = out
        return self._activations[key]

    def weight(self, consumer: onnx.NodeProto, name: str) -> str:
        if name not in self._weights:
            if name not in self.initializers:
                raise ValueError(f"{consumer.name}: weight {name!r} is not an initializer; "
                                 f"FP8 weights must be constants")
            array = numpy_helper.to_array(self.initializers[name])
            axis = _weight_axis(consumer, array.ndim)
            data, scale = _fp8_weight(array.astype(np.float32), axis)
            self.graph.initializer.extend([
                numpy_helper.from_array(data, f"{name}_fp8"),
                numpy_helper.from_array(self._scale(scale), f"{name}_fp8_scale")])
            out = f"{name}_fp8_dq"
            self.new_nodes.setdefault(consumer.name, []).append(helper.make_node(
                "DequantizeLinear", [f"{name}_fp8", f"{name}_fp8_scale"], [out], axis=axis,
                name=f"{name}_DequantizeLinear"))
            self._weights[name] = out
        return self._weights[name]

    def finish(self) -> None:
        """Insert new nodes before their first consumer (keeps topological order) and drop
        fp32 weights nothing reads any more."""
        nodes = []
        for node in self.graph.node:
            nodes.extend(self.new_nodes.get(node.name, []))
            nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def insert_fp8_qdq(model: onnx.ModelProto, amax: dict[str, float],
                   dtype: str = "float32") -> list[str]:
    """Quantize, in place, the GEMMs of the Linear layers named in `amax` (module path ->
    calibrated input amax). Returns the quantized layer names, sorted.

    dtype: the graph's float type ("float32" | "float16" | "bfloat16"); the scales take it,
    so DequantizeLinear hands the GEMM that type (ONNX ties both to the scale's type).

    Layers without a GEMM in the graph are skipped: the exporter removes dead code (the
    last DiT block's text stream feeds nothing). If none of the layers is found, the
    graph lost its module metadata and this raises rather than export an fp32 graph
    labelled fp8.
    """
    precision_for(dtype)  # the scales take a compute dtype: float32, float16 or bfloat16
    builder = _QDQBuilder(model.graph, lookup(dtype).numpy)
    found: set[str] = set()
    for node in model.graph.node:
        layer = linear_module(node)
        if layer not in amax:
            continue
        if not node.name:
            raise ValueError(f"unnamed {node.op_type} node for layer {layer}")
        found.add(layer)
        node.input[0] = builder.activation(node.name, node.input[0], amax[layer])
        node.input[1] = builder.weight(node, node.input[1])
    if amax and not found:
        raise RuntimeError(f"none of the {len(amax)} calibrated layers has a GEMM with "
                           f"module metadata in the graph; was it exported with dynamo=True?")
    builder.finish()
    return sorted(found)
