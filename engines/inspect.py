"""What an export or an engine folder holds: `cinema-trt inspect PATH`.

For a graph (an export folder, one stage's folder, or a `model.onnx`): its inputs and
outputs as polygraphy reads them (names, dtypes, dims with their symbols), the precision
and compute dtype its manifest records (a bare `model.onnx` has none: its initializers'
float types are shown instead), and op counts with the attention blocks and Q/DQ pairs
called out. For an engine folder: its manifest's backend, version, targets, precision and
I/O, and the builder's layer summary recorded there.

Nothing here runs a model; the ONNX weights are not loaded (external data stays on disk).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import QDQ_OPS, all_nodes, inspect_onnx

if TYPE_CHECKING:
    from cinema_trt.export.manifest import Manifest, TensorEntry

# op types shown first in the op table: what decides speed and precision
NOTABLE_OPS = ("Attention", "MatMul", "Gemm", "Conv", "Softmax", *QDQ_OPS)


@dataclass(frozen=True)
class GraphReport:
    path: str
    stage: str | None  # from the manifest; None (and the next two) for a bare model.onnx
    precision: str | None  # fp32 | fp16 | bf16 | fp8
    compute_dtype: str | None  # the float type outside Q/DQ pairs
    weight_types: tuple[str, ...]  # float types of the initializers, as stored
    inputs: tuple[TensorEntry, ...]  # dims as polygraphy reads them (symbols as strings)
    outputs: tuple[TensorEntry, ...]
    nodes: int  # every node, subgraphs included (polygraphy's count)
    ops: dict[str, int]  # op type -> count, subgraphs included
    attention_blocks: int
    qdq_types: tuple[str, ...]  # element types the Q/DQ nodes quantize to
    quantized_linears: int  # MatMul/Gemm nodes reading a DequantizeLinear output
    trt_plugins: tuple[str, ...]  # TensorRT plugin op types (TensorRT-only graphs)
    external_data: bool
    validation: dict[str, Any] = field(default_factory=dict)  # the export's check vs torch

    @property
    def qdq_nodes(self) -> int:
        return sum(self.ops.get(op, 0) for op in QDQ_OPS)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "onnx", **asdict(self), "qdq_nodes": self.qdq_nodes}


def _tensors(metadata) -> tuple[TensorEntry, ...]:
    """polygraphy TensorMetadata -> TensorEntry (dim_param symbols kept as strings)."""
    from cinema_trt.export.manifest import TensorEntry

    return tuple(TensorEntry(name, str(meta.dtype.name).lower() if meta.dtype else "unknown",
                             tuple(meta.shape or ()))
                 for name, meta in metadata.items())


def inspect_graph(onnx_path: str | os.PathLike,
                  manifest: Manifest | None = None) -> GraphReport:
    """Report on one ONNX graph; `manifest` is its folder's Manifest when it has one."""
    import onnx
    from polygraphy.backend.onnx.util import (
        get_input_metadata,
        get_num_nodes,
        get_output_metadata,
    )

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass an export folder, a stage folder "
                                f"or a model.onnx")
    model = onnx.load(str(path), load_external_data=False)
    info = inspect_onnx(path)
    ops = Counter(node.op_type for node in all_nodes(model.graph))
    return GraphReport(
        path=str(path), stage=manifest.stage if manifest else None,
        precision=manifest.precision.value if manifest else None,
        compute_dtype=manifest.compute_dtype if manifest else None,
        weight_types=tuple(sorted(info.weight_types)),
        inputs=_tensors(get_input_metadata(model.graph)),
        outputs=_tensors(get_output_metadata(model.graph)), nodes=get_num_nodes(model),
        ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        attention_blocks=len(info.attention_nodes), qdq_types=tuple(sorted(info.qdq_types)),
        quantized_linears=len(info.quantized_linears),
        trt_plugins=tuple(sorted(info.trt_plugins)), external_data=info.external_data,
        validation=manifest.validation.to_dict() if manifest else {})


# --- folders ----------------------------------------------------------------------------


def inspect_path(path: str | os.PathLike) -> list[Any]:
    """Reports for every stage under `path` (an export or engine folder, one stage's folder,
    or a model.onnx), in stage-name order."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".onnx":
            raise ValueError(f"{path}: expected a model.onnx, an export folder or an engine "
                             f"folder")
        return [inspect_graph(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    from cinema_trt.export.manifest import MANIFEST_FILE, stage_folders

    stages = stage_folders(path)
    if not stages:
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {path} or its stage folders; pass an "
                                f"export (`cinema-trt export`) or engine (`cinema-trt build`) "
                                f"folder, or a model.onnx")
    return [inspect_stage(s) for s in stages]


def inspect_stage(stage_dir: Path):
    """One stage folder: an export's (or ORT build's) graph, or an engine."""
    from cinema_trt.export.manifest import read_manifest

    manifest = read_manifest(stage_dir)
    if not manifest.onnxruntime_runs:
        return inspect_engine(stage_dir, manifest)
    return inspect_graph(stage_dir / manifest.model_file, manifest)


@dataclass(frozen=True)
class EngineReport:
    path: str
    stage: str
    backend: str  # the manifest's runtime: "tensorrt" | "tensorrt-rtx"
    version: str
    targets: tuple[str, ...]  # GPU architectures the plan runs on
    precision: str  # the build's
    compute_dtype: str  # the export's, from the manifest
    inputs: tuple[TensorEntry, ...]  # the stage's I/O, dims as the export named them
    outputs: tuple[TensorEntry, ...]
    profiles: dict[str, dict[str, list[int]]]  # input -> {min, opt, max}
    plan_bytes: int
    report: dict[str, Any]  # engines/report.py `summarize`: layers, attention, memory
    rebuild_command: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "engine", **asdict(self)}


def inspect_engine(stage_dir: Path, manifest: Manifest) -> EngineReport:
    """One engine folder, from its manifest (the plan is not deserialized: that needs the
    runtime, and for TensorRT-RTX a GPU)."""
    b = manifest.build
    assert b is not None, "inspect_stage passes build manifests"

    plan = stage_dir / b.plan_file
    return EngineReport(str(stage_dir), manifest.stage, b.runtime, b.runtime_version,
                        tuple(b.targets), b.precision, manifest.compute_dtype,
                        manifest.inputs, manifest.outputs, b.profiles,
                        plan.stat().st_size if plan.is_file() else 0, b.report,
                        b.rebuild_command)


# --- text -------------------------------------------------------------------------------


def _dims(dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _io_lines(title: str, tensors) -> list[str]:
    lines = [f"  {title}:"]
    width = max((len(t.name) for t in tensors), default=0)
    for t in tensors:
        dynamic = f"  dynamic: {', '.join(t.dynamic)}" if t.dynamic else ""
        lines.append(f"    {t.name.ljust(width)}  {t.dtype:<8} {_dims(t.dims)}{dynamic}")
    return lines


def format_graph(report: GraphReport) -> str:
    head = f"{report.stage or Path(report.path).name}: ONNX graph {report.path}"
    described = (f"{report.precision} (computes in {report.compute_dtype})"
                 if report.precision else f"- (no manifest; weights stored as "
                 f"{', '.join(report.weight_types) or 'none'})")
    lines = [head, f"  precision: {described}"
             + ("; weights in external data" if report.external_data else "")]
    lines += _io_lines("inputs", report.inputs) + _io_lines("outputs", report.outputs)
    notable = [f"{op} {report.ops[op]}" for op in NOTABLE_OPS if op in report.ops]
    lines.append(f"  nodes: {report.nodes}; attention blocks: {report.attention_blocks}; "
                 f"Q/DQ nodes: {report.qdq_nodes}"
                 + (f" ({', '.join(report.qdq_types)}; {report.quantized_linears} quantized "
                    f"linear layers)" if report.qdq_types else ""))
    lines.append(f"  ops: {', '.join(notable) or '-'}; {len(report.ops)} op types in all")
    if report.trt_plugins:
        lines.append(f"  TensorRT plugin nodes: {', '.join(report.trt_plugins)} (only "
                     f"TensorRT runs this graph)")
    v = report.validation
    if "cosine" in v:
        lines.append(f"  validated vs {v['reference']}: max_abs {v['max_abs']:.3g}, rel_max "
                     f"{v['rel_max']:.3g}, cosine {v['cosine']:.6f}")
    return "\n".join(lines)


def format_reports(reports: list) -> str:
    return "\n\n".join(format_graph(r) if isinstance(r, GraphReport) else format_engine(r)
                       for r in reports)


def format_engine(report: EngineReport) -> str:
    from .report import format_summary

    lines = [f"{report.stage}: {report.backend} {report.version} engine {report.path}",
             f"  precision: {report.precision} (computes in {report.compute_dtype}); targets: "
             f"{', '.join(report.targets) or '-'}; "
             f"plan {report.plan_bytes / 2**20:.2f} MiB"]
    lines += _io_lines("inputs", report.inputs) + _io_lines("outputs", report.outputs)
    lines.append("  profiles (min / opt / max):")
    for name, levels in report.profiles.items():
        shapes = " / ".join(_dims(levels[k]) for k in ("min", "opt", "max"))
        lines.append(f"    {name}: {shapes}")
    lines += ["  " + line.removeprefix(f"{report.stage}: ")
              for line in format_summary(report.stage, report.report).splitlines()]
    if report.report.get("by_kind"):
        kinds = ", ".join(f"{k} {v}" for k, v in report.report["by_kind"].items())
        layers_file = report.report.get("layers_file", "layers.json")
        lines.append(f"  layers by kind: {kinds} (every layer: {layers_file})")
    return "\n".join(lines)
