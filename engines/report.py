"""Engine reports: what the builder made of the graph, saved beside every plan.

With `profiling_verbosity = DETAILED` the builder logs its final layer list (VERBOSE, one
message starting "Layers:") and its memory figures (INFO, "Total Weights Memory: N bytes",
...), and it does so without a GPU. `parse_layers` / `parse_memory` read those messages;
`layers_from_inspector` reads the same facts from `IEngineInspector`'s JSON where the log
has no layer list (the `tensorrt` backend, which builds on its GPU and can deserialize).

`layers.json` holds one row per engine layer (name, kind, tactic, input/output dtypes, the
ONNX nodes it implements); `summarize` condenses it for the manifest: layers by kind and by
compute precision, the ONNX graph's attention blocks against the fused MHA layers that
implement them, and the precision each Q/DQ-quantized linear layer computes in.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cinema_trt.models.dtypes import find

from .config import OnnxGraphInfo
from .manifest import write_json_atomic

LAYERS_FILE = "layers.json"

# a fused attention kernel: Myelin's `_gemm_mha_v2`, TensorRT's fMHA / flash kernels
_FUSED_ATTENTION = re.compile(r"mha|flash", re.IGNORECASE)
_LAYER_LINE = re.compile(
    r"^Name: (?P<name>.*?), LayerType: (?P<kind>[^,]*), Inputs: \[(?P<inputs>.*?)\]"
    r"(?:, Constants: \[(?P<constants>.*?)\])?, Outputs: \[(?P<outputs>.*?)\], "
    r"TacticName: (?P<tactic>.*?)(?:, [^:,]+: [^,]*)*?, Metadata:(?P<metadata>.*)$")
# RTX prints "Datatype: Half"; TensorRT 10 "Format/Datatype: Row major linear FP16 format"
_TENSOR = re.compile(r"Dimensions: \[(?P<dims>[-\d,]*)\].*?Datatype: (?P<dtype>[^,}]*)")
_ONNX_NODE = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_MEMORY_KEYS = {"Total Weights": "weights_bytes", "Total Activation": "activation_bytes",
                "Total Device Persistent": "device_persistent_bytes",
                "Total Host Persistent": "host_persistent_bytes",
                "Max Scratch": "max_scratch_bytes"}
_MEMORY = re.compile(f"({'|'.join(_MEMORY_KEYS)}) Memory: (\\d+) bytes")


@dataclass(frozen=True)
class LayerRow:
    """One layer of a built engine."""

    name: str
    kind: str  # the builder's LayerType: gemm, kgen, runtime_fusion, Myelin, ...
    tactic: str  # the kernel (TacticName); empty where chosen at run time (JIT)
    inputs: tuple[str, ...]  # dtypes of the activations it reads
    weights: tuple[str, ...]  # dtypes of the constants it reads (scalars left out)
    outputs: tuple[str, ...]
    onnx_nodes: tuple[str, ...]  # the ONNX nodes it implements

    @property
    def compute_dtype(self) -> str:
        """The narrowest type it reads: an FP8 GEMM reads FP8 activations and weights and
        writes fp16; a quantize layer reads fp16 and counts as fp16."""
        ranked = [t for t in self.inputs + self.weights if _bits(t)]
        return min(ranked, key=_bits) if ranked else "none"

    @property
    def fused_attention(self) -> bool:
        return bool(_FUSED_ATTENTION.search(self.name) or _FUSED_ATTENTION.search(self.tactic))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compute_dtype": self.compute_dtype}


def _bits(dtype: str) -> int:
    """The width of the arithmetic on `dtype` (models/dtypes.py); 0: no arithmetic type.
    A layer computes in the narrowest type it reads."""
    row = find(dtype)
    return row.bits if row else 0


def datatype_name(text: str) -> str:
    """"Half" or "Row major linear FP16 format" -> "float16", "FP8" -> "float8e4m3fn", ...
    (text without a known type: lower-cased as it is)."""
    known = find(text) or next(filter(None, map(find, re.findall(r"\w+", text))), None)
    return known.name if known else text.strip().lower()


def _tensors(text: str | None, drop_scalars: bool = False) -> tuple[str, ...]:
    out = []
    for chunk in (text or "").split("{")[1:]:
        match = _TENSOR.search(chunk)
        if match is None:
            continue
        dims = [int(d) for d in match["dims"].split(",") if d]
        if drop_scalars and all(d == 1 for d in dims):
            continue  # GEMM alpha/beta, quantization scales
        out.append(datatype_name(match["dtype"]))
    return tuple(out)


def parse_layer_line(line: str) -> LayerRow | None:
    """One "Name: ..., LayerType: ..., ..., Metadata: [...]" line of the layer list."""
    match = _LAYER_LINE.match(line.strip())
    if match is None:
        return None
    return LayerRow(match["name"], match["kind"], match["tactic"], _tensors(match["inputs"]),
                    _tensors(match["constants"], drop_scalars=True), _tensors(match["outputs"]),
                    tuple(_ONNX_NODE.findall(match["metadata"])))


def parse_layers(messages: Iterable[str]) -> list[LayerRow]:
    """The layers of the builder's last "Layers:" message (DETAILED verbosity, VERBOSE log);
    empty when the log has none."""
    found: list[LayerRow] = []
    for message in messages:
        if not message.startswith("Layers:"):
            continue
        found = []
        for line in message.splitlines()[1:]:
            if not line.strip():
                break  # the I/O tensor list follows a blank line
            row = parse_layer_line(line)
            if row is None:
                raise ValueError(f"unrecognised layer line in the builder log: {line[:200]}")
            found.append(row)
    return found


def parse_memory(messages: Iterable[str]) -> dict[str, int]:
    """The builder's memory figures in bytes: weights, activation, device/host persistent,
    max scratch (the last value of each, for the final engine)."""
    memory: dict[str, int] = {}
    for message in messages:
        for kind, value in _MEMORY.findall(message):
            memory[_MEMORY_KEYS[kind]] = int(value)
    return memory


def layers_from_inspector(engine_information: str) -> list[LayerRow]:
    """Rows from `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`
    (built DETAILED). Its tensors spell the type in "Format/Datatype" ("Row major linear
    FP16 format"). Written from TensorRT's documented schema; not run yet (needs a GPU)."""
    data = json.loads(engine_information)

    def dtypes(tensors: list[dict]) -> tuple[str, ...]:
        return tuple(datatype_name(str(t.get("Format/Datatype", t.get("Datatype", ""))))
                     for t in tensors)

    rows = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # LayerInformationFormat.ONELINE-style entries
            continue
        metadata = str(layer.get("Metadata", ""))
        rows.append(LayerRow(str(layer.get("Name", "")), str(layer.get("LayerType", "")),
                             str(layer.get("TacticName", layer.get("Tactic", ""))),
                             dtypes(layer.get("Inputs", [])), (),
                             dtypes(layer.get("Outputs", [])),
                             tuple(_ONNX_NODE.findall(metadata))))
    return rows


def write_layers(folder: str | os.PathLike, layers: list[LayerRow]) -> Path:
    """`<folder>/layers.json`: one object per engine layer."""
    return write_json_atomic(Path(folder) / LAYERS_FILE, [row.to_dict() for row in layers])


def read_layers(folder: str | os.PathLike) -> list[dict[str, Any]]:
    return json.loads((Path(folder) / LAYERS_FILE).read_text())


def summarize(layers: list[LayerRow], memory: dict[str, int],
              graph: OnnxGraphInfo) -> dict[str, Any]:
    """The manifest's `report`: layer counts by kind and compute precision, attention
    fusion (every ONNX attention's Softmax/Attention node must sit in a fused MHA layer),
    the compute type of each Q/DQ-quantized linear node, and the builder's memory."""
    implemented_by: dict[str, LayerRow] = {}
    for row in layers:
        for node in row.onnx_nodes:
            implemented_by.setdefault(node, row)
    fused = [row for row in layers if row.fused_attention]
    fused_nodes = {node for row in fused for node in row.onnx_nodes}
    quantized = {node: implemented_by[node].compute_dtype if node in implemented_by
                 else "missing" for node in graph.quantized_linears}
    return {
        "layers_file": LAYERS_FILE,
        "layers": len(layers),
        "by_kind": dict(sorted(Counter(row.kind for row in layers).items())),
        "by_precision": dict(sorted(Counter(row.compute_dtype for row in layers).items())),
        "attention": {"onnx": len(graph.attention_nodes), "fused_layers": len(fused),
                      "unfused": sorted(set(graph.attention_nodes) - fused_nodes)},
        "quantized_linears": {"onnx": len(quantized),
                              "by_precision": dict(sorted(Counter(quantized.values()).items())),
                              "not_low_precision": sorted(
                                  n for n, t in quantized.items() if not 0 < _bits(t) <= 8)},
        "memory": memory,
    }


def format_summary(stage: str, report: dict[str, Any]) -> str:
    """Two lines for `cinema-trt build`'s output."""
    if not report:
        return f"{stage}: no layer report"
    attention = report["attention"]
    memory = report.get("memory", {})
    mib = {k: f"{memory[k] / 2 ** 20:.2f} MiB" if k in memory else "?"
           for k in ("weights_bytes", "activation_bytes", "device_persistent_bytes")}
    precisions = ", ".join(f"{k} {v}" for k, v in report["by_precision"].items())
    lines = [f"{stage}: {report['layers']} layers ({precisions}); attention: "
             f"{attention['onnx']} in ONNX, {attention['fused_layers']} fused MHA layers"
             + (f", UNFUSED {attention['unfused']}" if attention["unfused"] else ""),
             f"{stage}: weights {mib['weights_bytes']}, activations "
             f"{mib['activation_bytes']}, persistent {mib['device_persistent_bytes']}"]
    linears = report["quantized_linears"]
    if linears["onnx"]:
        lines[0] += f"; Q/DQ linears {linears['by_precision']}"
    return "\n".join(lines)
