"""Build configuration: precision as an Enum, one frozen dataclass, TensorRT flags as data.

The translation to TensorRT (`trt_flags`, `network_flags`) returns flag *names*, so it is
unit tested without TensorRT; `trt_build.py` turns the names into enum members.

Strong typing is derived from the export (its manifest's compute dtype, the graph's Q/DQ
nodes), not chosen (models/precision.py says when and why); a strongly typed network takes
every type from the graph, so the FP16/BF16 builder flags are then not set (TensorRT
rejects them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinema_trt.kernels.plugin_onnx import ONNX_DOMAIN as TRT_PLUGIN_DOMAIN
from cinema_trt.models.dtypes import find, lookup
from cinema_trt.models.precision import Precision, policy, precision_for, strong_typing_reasons

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What the builder needs to know about an ONNX graph before building it."""

    has_qdq: bool
    qdq_types: frozenset[str]  # element types the Q/DQ nodes quantize to ("float8e4m3fn", ...)
    weight_types: frozenset[str]  # float element types of the initializers
    inputs: dict[str, str] = field(default_factory=dict)  # graph input name -> element type
    outputs: dict[str, str] = field(default_factory=dict)
    external_data: bool = False  # weights live in files beside the .onnx
    # op types of TensorRT plugin nodes: the plugins must be registered before parsing
    trt_plugins: frozenset[str] = frozenset()
    # names of the nodes that make each attention block (one Softmax, or one opset-23
    # Attention, per block): an engine report checks each sits in a fused MHA layer
    attention_nodes: tuple[str, ...] = ()
    # names of the MatMul/Gemm nodes reading a DequantizeLinear output (the Q/DQ recipe's
    # linear layers): an FP8 engine must run them in FP8
    quantized_linears: tuple[str, ...] = ()

    @property
    def has_fp8(self) -> bool:
        return any(t.startswith("float8") for t in self.qdq_types)


def inspect_onnx(onnx_path: str | os.PathLike) -> OnnxGraphInfo:
    """Read the graph (not its external weights) and report Q/DQ nodes, weight types and
    TensorRT plugin nodes."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    elem_types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    elem_types[node.output[0]] = attr.t.data_type
    qdq_types: set[str] = set()
    quantized: dict[str, str] = {}  # QuantizeLinear output -> its type, for the DQ reading it
    has_qdq = False
    for node in all_nodes(graph):
        if node.op_type not in QDQ_OPS:
            continue
        has_qdq = True
        kind = quantized.get(node.input[0]) or _qdq_type(node, elem_types)
        if "Dequantize" not in node.op_type:  # a Q node: the DQ reading it has its type
            quantized.update(dict.fromkeys(node.output, kind))
        qdq_types.add(kind)
    weights = {d.name for t in graph.initializer if (d := find(t.data_type)) and "float" in d.name}
    initializers = set(elem_types)
    # old exporters list initializers among the inputs too; those are weights, not inputs
    inputs = {v.name: lookup(v.type.tensor_type.elem_type).name for v in graph.input
              if v.name not in initializers}
    outputs = {v.name: lookup(v.type.tensor_type.elem_type).name for v in graph.output}
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    plugins = frozenset(n.op_type for n in all_nodes(graph) if n.domain == TRT_PLUGIN_DOMAIN)
    return OnnxGraphInfo(has_qdq, frozenset(qdq_types), frozenset(weights), inputs, outputs,
                         external, plugins, *_report_nodes(graph))


def _report_nodes(graph) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attention nodes, quantized linear nodes) by name, as engine reports match them."""
    nodes = list(all_nodes(graph))
    attention = tuple(n.name for n in nodes if n.op_type in ("Softmax", "Attention")
                      and n.domain in ("", "ai.onnx"))
    dequantized = {out for n in nodes if n.op_type == "DequantizeLinear"
                   for out in n.output}
    linears = tuple(n.name for n in nodes if n.op_type in ("MatMul", "Gemm")
                    and any(i in dequantized for i in n.input))
    return attention, linears


def all_nodes(graph):
    # Q/DQ may sit inside If/Loop subgraphs
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from all_nodes(attr.g)


def _qdq_type(node, elem_types: dict[str, int]) -> str:
    if node.op_type == "DequantizeLinear" and node.input[0] in elem_types:
        # a quantized constant (FP8 weights): its own type is the quantized type
        return lookup(elem_types[node.input[0]]).name
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:  # opset 21 QuantizeLinear
            return lookup(attr.i).name
    if len(node.input) > 2 and node.input[2] in elem_types:  # zero point decides the type
        return lookup(elem_types[node.input[2]]).name
    return "int8"  # ONNX default when no zero point is given is uint8; TensorRT runs INT8


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides an engine besides the graph and its shapes.

    `strongly_typed` is derived from the graph: use `resolve_build_config`, which sets it.
    """

    precision: Precision = Precision.FP16
    workspace_gib: float = 8.0
    optimization_level: int = 3  # TensorRT builder_optimization_level, 0..5
    timing_cache: Path | None = None
    weight_streaming: bool = False
    refittable: bool = False
    strongly_typed: bool = False
    # compute capabilities the engine is compiled for (models/backends.py names them);
    # empty: the backend's default (TensorRT-RTX: every target the precision allows;
    # TensorRT: the build GPU). prepare_build resolves it
    targets: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if not 0 < self.workspace_gib <= 1024:
            raise ValueError(f"workspace_gib={self.workspace_gib} must be in (0, 1024] GiB")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level={self.optimization_level} must be in 0..5 "
                             "(TensorRT's builder_optimization_level; 3 is its default)")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["precision"] = self.precision.value
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        data["targets"] = list(self.targets)
        return data

    def cache_fields(self) -> dict[str, Any]:
        """The fields that change the built engine. The timing cache only makes the build
        faster (it replays tactic timings), so its path is left out of the cache key."""
        data = self.to_dict()
        del data["timing_cache"]
        return data


def resolve_build_config(config: BuildConfig, graph: OnnxGraphInfo, compute: str,
                         weak_typing: bool = True) -> BuildConfig:
    """`config` with `strongly_typed` derived from the export, checked against it.

    compute: the export manifest's compute dtype ("float32" | "float16" | "bfloat16"), the
    float type of the graph's arithmetic outside Q/DQ pairs, as the exporter recorded it.
    weak_typing: whether the backend at hand still has weakly typed builds
    (models/backends.py `Backend.weak_typing`); without them every network is strongly
    typed.
    """
    strongly_typed = bool(strong_typing_reasons(compute, graph.has_qdq,
                                                config.weight_streaming, weak_typing))
    resolved = dataclasses.replace(config, strongly_typed=strongly_typed)
    precision = resolved.precision
    if precision is Precision.FP8 and not graph.has_fp8:
        raise ValueError(
            "precision=fp8 needs an ONNX graph with FP8 QuantizeLinear/DequantizeLinear nodes "
            f"(found Q/DQ types {sorted(graph.qdq_types) or 'none'}): TensorRT 10 runs FP8 "
            "only through explicit quantization. Export with --fp8 (the FP8 PTQ recipe), "
            "or build with --precision fp16")
    if graph.has_fp8 and precision is not Precision.FP8:
        raise ValueError(f"the ONNX graph has FP8 Q/DQ nodes, so its engine runs FP8 layers; "
                         f"build it with --precision fp8 (not {precision.value})")
    if strongly_typed and precision is not Precision.FP8 \
            and policy(precision).compute != compute:
        raise ValueError(_strong_typing_mismatch(resolved, graph, compute, weak_typing))
    if graph.trt_plugins:
        _check_plugin_precision(resolved, graph, compute)
    if strongly_typed and compute == "float32" and graph.has_qdq:
        log.warning("strongly typed build of a float32 graph: layers outside the Q/DQ pairs "
                    "run in float32. Export with --dtype fp16 or bf16 for speed.")
    if not strongly_typed and precision in (Precision.FP16, Precision.BF16):
        log.warning("weakly typed %s build of a float32 graph: TensorRT 10.12 deprecated "
                    "this and TensorRT 11 removed it; export with --dtype %s to build it "
                    "strongly typed", precision.value, precision.value)
    return resolved


def _strong_typing_mismatch(config: BuildConfig, graph: OnnxGraphInfo, compute: str,
                            weak_typing: bool) -> str:
    """Why precision=`config.precision` cannot come out of this strongly typed build."""
    wanted = config.precision.value
    if compute != "float32":
        return (f"precision={wanted} does not match the export, which computes in {compute} "
                f"(exported with --dtype {precision_for(compute).value}); a strongly "
                f"typed build runs the graph's own types: build with --precision "
                f"{precision_for(compute).value}, or re-export with --dtype {wanted}")
    reasons = strong_typing_reasons(compute, graph.has_qdq, config.weight_streaming,
                                    weak_typing)
    return (f"precision={wanted} has no effect on this float32 graph: it is built strongly "
            f"typed ({'; '.join(reasons)}), which takes every type from the ONNX graph. "
            f"Re-export with `cinema-trt export --dtype {wanted}`, or build with --precision "
            f"fp32 to state what you will get")


def _check_plugin_precision(config: BuildConfig, graph: OnnxGraphInfo, compute: str) -> None:
    """The Triton attention plugins run fp16/bf16 only. A weakly typed fp16/bf16 build lets
    TensorRT reformat fp32 tensors around them; fp32 builds and strongly typed builds of an
    fp32 graph would hand them fp32 tensors."""
    if config.strongly_typed and compute == "float32":
        raise ValueError(f"the graph's TensorRT plugins {sorted(graph.trt_plugins)} take "
                         f"fp16/bf16 tensors, but a strongly typed build keeps this float32 "
                         f"graph's types; export with --dtype fp16 or bf16, or without "
                         f"--attention-plugin")
    if not config.strongly_typed and config.precision is Precision.FP32:
        raise ValueError(f"the graph's TensorRT plugins {sorted(graph.trt_plugins)} run "
                         f"fp16/bf16 only; build with --precision fp16 or bf16")


def ort_optimization_level(config: BuildConfig) -> str:
    """`onnxruntime.GraphOptimizationLevel` member name for `config.optimization_level`
    (TensorRT's 0..5 scale; 3, the default, and above enable every ORT optimization)."""
    names = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED")
    return names[config.optimization_level] if config.optimization_level < 3 \
        else "ORT_ENABLE_ALL"


def network_flags(config: BuildConfig) -> list[str]:
    """Names of `trt.NetworkDefinitionCreationFlag` members (explicit batch is implied in
    TensorRT 10 and its flag is deprecated, so it is never listed)."""
    return ["STRONGLY_TYPED"] if config.strongly_typed else []


def trt_flags(config: BuildConfig) -> list[str]:
    """Names of `trt.BuilderFlag` members for `config`."""
    weak_flag = policy(config.precision).weak_flag
    flags = [weak_flag] if weak_flag and not config.strongly_typed else []
    if config.precision is Precision.FP8 and not config.strongly_typed:
        raise ValueError("precision=fp8 builds strongly typed from a Q/DQ graph; "
                         "call resolve_build_config first")
    if config.refittable:
        flags.append("REFIT")
    if config.weight_streaming:
        if not config.strongly_typed:
            raise ValueError("weight streaming needs a strongly typed network; "
                             "call resolve_build_config first")
        flags.append("WEIGHT_STREAMING")
    return flags
