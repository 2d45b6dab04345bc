"""Build configuration: precision as an Enum, one frozen dataclass, TensorRT flags as data.

The translation to TensorRT (`trt_flags`, `network_flags`) returns flag *names*, so it is
unit tested without TensorRT; `trt_build.py` turns the names into enum members.

Strong typing is derived from the ONNX graph, not chosen: a graph with Q/DQ nodes (FP8 or
INT8 explicit quantization) must be built strongly typed so TensorRT keeps the quantized
types the graph states, and a strongly typed network takes every precision from the graph,
so the FP16/BF16 builder flags are then not set (TensorRT rejects them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinema_trt.models.presets import Precision  # re-exported: engines.config.Precision

log = logging.getLogger(__name__)


# weakly typed networks: the builder may pick these types in addition to fp32
_PRECISION_FLAGS = {Precision.FP32: (), Precision.FP16: ("FP16",), Precision.BF16: ("BF16",),
                    Precision.FP8: ()}
# ONNX TensorProto element types (onnx.TensorProto.*), spelled out to keep onnx a lazy import
_ONNX_FLOAT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64",
                     17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
                     20: "float8e5m2fnuz"}
_PRECISION_ONNX_TYPE = {Precision.FP16: "float16", Precision.BF16: "bfloat16"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ONNX domain of TensorRT plugin nodes (kernels.trt_plugin.ONNX_DOMAIN, spelled out so the
# engines package does not import torch to inspect a graph; a test checks they agree)
TRT_PLUGIN_DOMAIN = "trt.plugins"


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
    has_qdq = False
    for node in _all_nodes(graph):
        if not _is_qdq(node.op_type):
            continue
        has_qdq = True
        qdq_types.add(_qdq_type(node, elem_types))
    weights = {_ONNX_FLOAT_TYPES[t.data_type] for t in graph.initializer
               if t.data_type in _ONNX_FLOAT_TYPES}
    initializers = set(elem_types)
    # old exporters list initializers among the inputs too; those are weights, not inputs
    inputs = {v.name: onnx_type_name(v.type.tensor_type.elem_type) for v in graph.input
              if v.name not in initializers}
    outputs = {v.name: onnx_type_name(v.type.tensor_type.elem_type) for v in graph.output}
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    plugins = frozenset(n.op_type for n in _all_nodes(graph) if n.domain == TRT_PLUGIN_DOMAIN)
    return OnnxGraphInfo(has_qdq, frozenset(qdq_types), frozenset(weights), inputs, outputs,
                         external, plugins)


def onnx_type_name(elem_type: int) -> str:
    """ONNX element type -> "float32", "int64", "bfloat16", ... (torch's spelling)."""
    if elem_type in _ONNX_FLOAT_TYPES:
        return _ONNX_FLOAT_TYPES[elem_type]
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _all_nodes(graph):
    # Q/DQ may sit inside If/Loop subgraphs
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from _all_nodes(attr.g)


def _is_qdq(op_type: str) -> bool:
    # standard ops plus ModelOpt's TensorRT-domain ops (TRT_FP8QuantizeLinear, ...)
    return op_type in QDQ_OPS or (op_type.startswith("TRT_") and "QuantizeLinear" in op_type)


def _qdq_type(node, elem_types: dict[str, int]) -> str:
    if "FP8" in node.op_type:
        return "float8e4m3fn"
    if "INT4" in node.op_type:
        return "int4"
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:  # opset 21 QuantizeLinear
            return _ONNX_FLOAT_TYPES.get(attr.i, f"onnx-type-{attr.i}")
    if len(node.input) > 2 and node.input[2] in elem_types:  # zero point decides the type
        t = elem_types[node.input[2]]
        return _ONNX_FLOAT_TYPES.get(t, "int8" if t == 3 else f"onnx-type-{t}")
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

    def __post_init__(self):
        object.__setattr__(self, "precision", Precision.parse(self.precision))
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
        return data

    def cache_fields(self) -> dict[str, Any]:
        """The fields that change the built engine. The timing cache only makes the build
        faster (it replays tactic timings), so its path is left out of the cache key."""
        data = self.to_dict()
        del data["timing_cache"]
        return data


def resolve_build_config(config: BuildConfig, graph: OnnxGraphInfo) -> BuildConfig:
    """`config` with `strongly_typed` derived from the graph, checked against it."""
    strongly_typed = graph.has_qdq or config.weight_streaming
    resolved = dataclasses.replace(config, strongly_typed=strongly_typed)
    if resolved.precision is Precision.FP8 and not graph.has_fp8:
        raise ValueError(
            "precision=fp8 needs an ONNX graph with FP8 QuantizeLinear/DequantizeLinear nodes "
            f"(found Q/DQ types {sorted(graph.qdq_types) or 'none'}): TensorRT 10 runs FP8 "
            "only through explicit quantization. Quantize the model (NVIDIA ModelOpt FP8 "
            "recipe) before export, or build with --precision fp16")
    if graph.has_fp8 and resolved.precision is not Precision.FP8:
        raise ValueError(f"the ONNX graph has FP8 Q/DQ nodes, so its engine runs FP8 layers; "
                         f"build it with --precision fp8 (not {resolved.precision.value})")
    wanted = _PRECISION_ONNX_TYPE.get(resolved.precision)
    if strongly_typed and wanted and wanted not in graph.weight_types:
        reason = "it has Q/DQ nodes" if graph.has_qdq else "weight streaming needs it"
        raise ValueError(
            f"precision={resolved.precision.value} has no effect on this graph: it is built "
            f"strongly typed ({reason}), which takes every type from the ONNX graph, and the "
            f"graph's weights are {sorted(graph.weight_types)}. Export the ONNX in "
            f"{wanted}, or build with --precision fp32 to state what you will get")
    if graph.trt_plugins:
        _check_plugin_precision(resolved, graph)
    if strongly_typed and "float32" in graph.weight_types and not graph.weight_types & {
            "float16", "bfloat16"}:
        log.warning("strongly typed build of a float32 graph: layers outside the Q/DQ pairs "
                    "run in float32. Export the graph in float16/bfloat16 for speed.")
    return resolved


def _check_plugin_precision(config: BuildConfig, graph: OnnxGraphInfo) -> None:
    """The Triton attention plugins run fp16/bf16 only. A weakly typed fp16/bf16 build lets
    TensorRT reformat fp32 tensors around them; fp32 and strongly typed builds of an fp32
    graph would hand them fp32 tensors."""
    half = {"float16", "bfloat16"}
    if config.strongly_typed and not graph.weight_types & half:
        raise ValueError(f"the graph's TensorRT plugins {sorted(graph.trt_plugins)} take "
                         f"fp16/bf16 tensors, but a strongly typed build (Q/DQ nodes or weight "
                         f"streaming) keeps this float32 graph's types; export the graph in "
                         f"fp16/bf16, or without the attention plugin")
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
    flags = [] if config.strongly_typed else list(_PRECISION_FLAGS[config.precision])
    if config.precision is Precision.FP8 and not config.strongly_typed:
        raise ValueError("precision=fp8 builds strongly typed from a Q/DQ graph; "
                         "call resolve_build_config(config, inspect_onnx(path)) first")
    if config.refittable:
        flags.append("REFIT")
    if config.weight_streaming:
        if not config.strongly_typed:
            raise ValueError("weight streaming needs a strongly typed network; "
                             "call resolve_build_config first")
        flags.append("WEIGHT_STREAMING")
    return flags
