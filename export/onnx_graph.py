"""torch -> ONNX for one stage: trace, clean up, name the dims, save, check.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript's torchlib).
The TorchScript exporter (dynamo=False) exports these models too, about 10x faster, but it
is deprecated since torch 2.9 and its graphs are worse for what comes next: its node scopes
only record modules whose `forward` was called, so the DiT's text and visual stream layers
(called through helper methods) get the same scope and the FP8 pass could not tell them
apart; its raw DiT graph also holds ~400 Constant/Cast/Identity nodes of shape arithmetic. The
dynamo graph carries each node's exact module path in its metadata (`name_scopes`), keeps
named dynamic dims, and dead-code-eliminates (e.g. the last DiT block's unused text stream).
"""

from __future__ import annotations

import ast
import inspect
import logging
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch

from cinema_trt.models.specs import StageSpec

from .manifest import EXTERNAL_DATA_FILE

logger = logging.getLogger(__name__)

# 19 is the first opset with float8 QuantizeLinear/DequantizeLinear, and what TensorRT 10
# parses everywhere; nothing in these graphs needs a newer operator
DEFAULT_OPSET = 19
# protobuf cannot serialise a message above 2 GiB: bigger weights go to model.onnx.data
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3


def dynamic_shapes(spec: StageSpec) -> dict[str, dict[int, str]]:
    """{input name: {axis: symbol}} for torch.onnx.export, from the stage spec."""
    return {t.name: {axis: dim for axis, dim in enumerate(t.dims) if isinstance(dim, str)}
            for t in spec.inputs}


def bind_inputs(module: torch.nn.Module, spec: StageSpec, example: dict[str, torch.Tensor]
                ) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """(args, dynamic shapes) of a trace of `module` on `example`, bound to forward's
    signature: the spec's inputs in order, the first named as forward's parameters, the
    rest (whose spec names need not be identifiers: the VAE decoder's `state.<conv>`)
    taken by its `*args`, whose shapes torch.export wants as one tuple under that
    parameter's name. (Not `**kwargs`: torch 2.9's export files keyword arguments outside
    forward's parameters twice and fails to match their shapes.)"""
    parameters = inspect.signature(module.forward).parameters.values()
    positional = [p.name for p in parameters if p.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    var_positional = next((p.name for p in parameters
                           if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    names = spec.input_names
    if list(names[:len(positional)]) != positional[:len(names)]:
        raise ValueError(f"{spec.name}: forward's parameters {positional} are not the spec's "
                         f"first inputs {list(names)}, in order")
    rest = names[len(positional):]
    if rest and var_positional is None:
        raise ValueError(f"{spec.name}: inputs {list(rest)} match no parameter of "
                         f"{type(module).__name__}.forward and it takes no *args")
    # a tensor without dynamic dims is None: an empty dict would read as an empty
    # container, not a tensor, where torch.export matches the shapes to the inputs
    dims = {name: axes or None for name, axes in dynamic_shapes(spec).items()}
    shapes: dict[str, Any] = {n: dims[n] for n in names[:len(positional)]}
    if rest:
        assert var_positional is not None
        shapes[var_positional] = tuple(dims[n] for n in rest)
    return tuple(example[n] for n in names), shapes


@contextmanager
def _quiet(*names: str):
    """Silence chatty INFO logs (onnx_ir logs every deduplicated initializer)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def trace_to_onnx(module: torch.nn.Module, spec: StageSpec, example: dict[str, torch.Tensor],
                  opset: int = DEFAULT_OPSET, attention_plugin: bool = False) -> onnx.ModelProto:
    """Export `module` (forward takes spec.inputs: `bind_inputs`) with the spec's dynamic dims and
    run the onnxscript optimizer (constant folding, dead code, redundant casts/reshapes).

    attention_plugin: map each `torch.ops.cinema.attention*` call to a TensorRT plugin node
    (`kernels.plugin_onnx`): the module must attend through those ops without a fused
    prologue, e.g. a DiT with attention backend "triton_unfused". Only TensorRT (with
    `register_plugins()`) can run such a graph; ONNX Runtime cannot.
    """
    args, shapes = bind_inputs(module, spec, example)
    options: dict[str, Any] = {}
    if attention_plugin:
        from cinema_trt.kernels.plugin_onnx import onnx_translation_table

        options["custom_translation_table"] = onnx_translation_table()
    with warnings.catch_warnings(), _quiet("onnx_ir", "onnxscript", "torch.onnx"):
        # the exporter warns when two inputs share a symbol (batch); that is intended
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        # torch.export's own pytree deprecation notice, not actionable here
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
        program = torch.onnx.export(
            module, args, input_names=list(spec.input_names),
            output_names=list(spec.output_names), dynamic_shapes=shapes,
            dynamo=True, opset_version=opset, optimize=False, verify=False, report=False,
            verbose=False, **options)
        if program is None:  # only the legacy exporter returns None (dynamo=True here)
            raise RuntimeError(f"{spec.name}: torch.onnx.export returned no ONNX program")
        program.optimize()
    model = program.model_proto
    if attention_plugin and not plugin_nodes(model):
        raise ValueError(f"{spec.name}: attention_plugin=True but the graph has no plugin "
                         f"node: the module never calls torch.ops.cinema.attention; build "
                         f"it with attention backend 'triton_unfused'")
    strip_debug_metadata(model)
    name_io_dims(model, spec)
    return model


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's TensorRT plugin nodes (domain `trt.plugins`), in graph order."""
    from cinema_trt.kernels.plugin_onnx import ONNX_DOMAIN

    return [node for node in model.graph.node if node.domain == ONNX_DOMAIN]


# node metadata worth keeping: module paths and classes (the FP8 pass selects layers by
# them; profilers show them). Stack traces and FX dumps are dropped: they hold this
# checkout's file paths, so identical models would hash differently on two machines, and
# they are half the graph's bytes.
SCOPES_KEY, CLASSES_KEY = "pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy"


def strip_debug_metadata(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key in (SCOPES_KEY, CLASSES_KEY)]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def node_scopes(node: onnx.NodeProto) -> tuple[list[str], list[str]] | None:
    """(module paths, module classes) the exporter recorded for `node`, outermost first
    (`["", "blocks", "blocks.0", ...]`); None when it recorded none."""
    meta = {p.key: p.value for p in node.metadata_props}
    if SCOPES_KEY not in meta or CLASSES_KEY not in meta:
        return None
    return ast.literal_eval(meta[SCOPES_KEY]), ast.literal_eval(meta[CLASSES_KEY])


def name_io_dims(model: onnx.ModelProto, spec: StageSpec) -> None:
    """Give graph inputs/outputs the spec's symbols (the exporter writes derived names like
    '4*lframes - 3'); raise if the trace fixed a dim the spec says is dynamic."""
    graph_io = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    for tensor in (*spec.inputs, *spec.outputs):
        value = graph_io.get(tensor.name)
        if value is None:
            raise RuntimeError(f"{spec.name}: exported graph has no tensor {tensor.name!r}; "
                               f"graph I/O is {sorted(graph_io)}")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(tensor.dims):
            raise RuntimeError(f"{spec.name}.{tensor.name}: graph rank {len(dims)} != spec "
                               f"rank {len(tensor.dims)} ({tensor.dims})")
        for axis, (dim, want) in enumerate(zip(dims, tensor.dims, strict=True)):
            if isinstance(want, str):
                if dim.HasField("dim_value"):
                    raise RuntimeError(
                        f"{spec.name}.{tensor.name}: axis {axis} ({want!r}) was specialised to "
                        f"{dim.dim_value} by the trace; the model has shape-dependent Python "
                        f"control flow on it (see torch.export's guard log)")
                dim.dim_param = want
            elif dim.HasField("dim_value") and dim.dim_value != want:
                raise RuntimeError(f"{spec.name}.{tensor.name}: axis {axis} is {dim.dim_value} "
                                   f"in the graph but {want} in the spec")


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike,
              threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """Save `model` to `path`, weights in `model.onnx.data` when they exceed `threshold`
    bytes; returns the files written (graph first)."""
    path = Path(path)
    external = initializer_bytes(model) > threshold
    data = path.with_name(EXTERNAL_DATA_FILE)
    data.unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    return [path, data] if external else [path]


def check_onnx(path: str | os.PathLike) -> None:
    """Strict shape inference (written back, so the file carries every inferred shape),
    then the full checker. Both work from the path, so models above 2 GiB pass too.
    TensorRT plugin nodes pass as well: ONNX checks no op of a domain it has no schemas
    for, and the plugin's outputs keep the shapes the exporter recorded."""
    path = str(path)
    onnx.shape_inference.infer_shapes_path(path, path, strict_mode=True, data_prop=True)
    onnx.checker.check_model(path, full_check=True)


def weight_count(model_path: str | os.PathLike) -> int:
    """Elements in the graph's initializers (read from the graph, not the external data)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return sum(math.prod(tensor.dims) for tensor in model.graph.initializer)
