"""`manifest.json`: what an exported stage is, written last and atomically.

Layout of an export folder (the engines builder and `OrtRunner` read it):

    <out>/<stage>/model.onnx        the graph (+ model.onnx.data when weights exceed 2 GB)
    <out>/<stage>/manifest.json     this record
    <out>/<stage>/...               sidecar files the stage's runner needs (a split stage's
                                    glue graph: the HF config and token embeddings)

A stage folder without a manifest is incomplete: the exporter deletes the old manifest
before it touches the model files and writes the new one only after the graph has been
checked and compared with PyTorch, so a crash never leaves a manifest describing half a
model.

`cinema-trt build --runtime ort` writes the same layout with an engine manifest
(engines/manifest.py) whose `extra["export_manifest"]` carries this record verbatim.
`read_stage` is the one reader of both: what a stage computes (names, dtypes, dims,
config, precision) is written once, by the exporter, and a build only adds how it was
built; nothing re-derives the I/O from the build's bindings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# re-exported: `cinema_trt.export.manifest.Precision` is the same enum as engines' and
# stays importable from here
from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.fileio import sha256_files as files_sha256  # noqa: F401  (re-exported)
from cinema_trt.models.presets import Precision
from cinema_trt.models.specs import StageSpec, TensorSpec

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
MANIFEST_VERSION = 1
# where an ORT build's engine manifest carries the export manifest it was built from
CARRIED_MANIFEST_KEY = "export_manifest"


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: the manifest's (and numpy's) spelling."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # numpy spelling, e.g. "float32", "int64"
    dims: tuple[int | str, ...]  # ints are fixed, strings are symbols from the stage spec

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorEntry:
        return cls(spec.name, dtype_name(spec.dtype), tuple(spec.dims))

    @property
    def rank(self) -> int:
        return len(self.dims)


@dataclass(frozen=True)
class Manifest:
    stage: str
    preset: str
    opset: int
    precision: Precision
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    source_sha256: str  # of the stage's state dict bytes (see state_dict_sha256)
    onnx_sha256: str  # of model.onnx (+ its external data), keys engine caches
    versions: dict[str, str]
    config: dict[str, Any]  # the resolved CinemaConfig, so the folder explains itself
    external_data: bool = False
    validation: dict[str, Any] = field(default_factory=dict)  # errors vs torch, per shape
    quantization: dict[str, Any] = field(default_factory=dict)  # fp8: recipe and layers
    version: int = MANIFEST_VERSION
    # the float type of the graph's arithmetic (outside Q/DQ pairs): "float32", "float16"
    # or "bfloat16"; its inputs and outputs are the spec's dtypes whatever this is
    compute_dtype: str = "float32"
    # files beside the graph that its runner reads (a split stage's glue, models/stages.py:
    # HF config and token embeddings): name -> sha256, checked when they are loaded
    sidecars: dict[str, str] = field(default_factory=dict)

    @classmethod
    def io_from_spec(cls, spec: StageSpec) -> dict[str, tuple[TensorEntry, ...]]:
        return {"inputs": tuple(TensorEntry.from_spec(t) for t in spec.inputs),
                "outputs": tuple(TensorEntry.from_spec(t) for t in spec.outputs)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision"] = self.precision.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r} is not supported "
                             f"(expected {MANIFEST_VERSION}); re-export the stage")

        # fp32 | fp16 | bf16: what the graph computes in (export/dtype.py); fp8: FP8 E4M3
        # Q/DQ around the recipe's Linear layers and `compute_dtype` elsewhere
        precision = Precision.parse(data["precision"])

        def entries(items):
            return tuple(TensorEntry(e["name"], e["dtype"], tuple(e["dims"])) for e in items)

        return cls(**{**data, "precision": precision,
                      "inputs": entries(data["inputs"]), "outputs": entries(data["outputs"])})


def write_manifest(manifest: Manifest, stage_dir: str | os.PathLike) -> Path:
    """Write `stage_dir/manifest.json` atomically (temp file, fsync, rename)."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True)
    return atomic_write(Path(stage_dir) / MANIFEST_FILE, text)


@dataclass(frozen=True)
class StageFolder:
    """A stage folder ONNX Runtime can run: an export or a `build --runtime ort` output."""

    path: Path
    manifest: Manifest  # the exporter's record (an ORT build carries it verbatim)
    model_file: str  # the graph to run, relative to `path`
    build: dict[str, Any] | None = None  # the ORT build's engine manifest; None: an export

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file


def _built_stage(path: Path, data: dict[str, Any]) -> StageFolder:
    """An engine manifest (engines/manifest.py): only ORT builds are graphs ORT can run."""
    rebuild = data.get("rebuild_command", "cinema-trt build --runtime ort ...")
    if data.get("runtime") != "onnxruntime":
        raise ValueError(f"{path} is a {data.get('runtime')} engine, which ONNX Runtime "
                         f"cannot run; point at the export folder or a `cinema-trt build "
                         f"--runtime ort` folder (TensorRT engines load with "
                         f"cinema_trt.engines.trt_runtime.tensorrt_runners)")
    carried = data.get("extra", {}).get(CARRIED_MANIFEST_KEY)
    if carried is None:
        raise ValueError(f"{path}: this ORT build does not carry its export manifest (built "
                         f"by an older cinema-trt); rebuild it with:\n  {rebuild}")
    return StageFolder(path, Manifest.from_dict(carried), data["plan_file"], data)


def read_stage(stage_dir: str | os.PathLike) -> StageFolder:
    """Read `stage_dir/manifest.json`, written by the exporter or by `build --runtime ort`."""
    path = Path(stage_dir)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: {stage_dir} is not a complete "
                                f"export (run `cinema-trt export` for this stage)")
    try:
        data = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{manifest_path}: not valid JSON ({error}); re-export") from None
    if "format_version" in data:  # engine manifests have it, export manifests "version"
        return _built_stage(path, data)
    return StageFolder(path, Manifest.from_dict(data), MODEL_FILE)


def read_manifest(stage_dir: str | os.PathLike) -> Manifest:
    """The manifest of an export folder. A build folder is refused: its graph is not the
    exported one, so the export's hashes do not describe it (use `read_stage`)."""
    stage = read_stage(stage_dir)
    if stage.build is not None:
        raise ValueError(f"{stage_dir} is a `cinema-trt build --runtime ort` folder, not an "
                         f"export; pass the export folder it was built from "
                         f"({Path(stage.build['onnx_path']).parent})")
    return stage.manifest


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every state-dict tensor, in name order.

    Hashing the tensors rather than a checkpoint file gives the same key whether the weights
    came from a preset seed or a safetensors folder, and covers exactly one stage.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # bytes via a uint8 view: works for every dtype, bfloat16 and float8 included
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def exporter_versions() -> dict[str, str]:
    """Versions of every library that shaped the graph (the engines cache keys on them)."""
    import onnx
    import onnxruntime
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}
