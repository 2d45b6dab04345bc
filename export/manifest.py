"""`manifest.json`: what an exported stage is, written last and atomically.

Layout of an export folder (the engines builder and `OrtRunner` read it):

    <out>/<stage>/model.onnx        the graph (+ model.onnx.data when weights exceed 2 GB)
    <out>/<stage>/manifest.json     this record

A stage folder without a manifest is incomplete: the exporter deletes the old manifest
before it touches the model files and writes the new one only after the graph has been
checked and compared with PyTorch, so a crash never leaves a manifest describing half a
model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from cinema_trt.models.specs import StageSpec, TensorSpec

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
MANIFEST_VERSION = 1


class Precision(str, Enum):
    """Numeric format of an exported graph's compute (I/O tensors stay as in the spec)."""

    FP32 = "fp32"
    FP8 = "fp8"  # FP8 (E4M3) Q/DQ around the recipe's Linear layers, fp32 elsewhere


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: the manifest's (and numpy's) spelling."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # numpy spelling, e.g. "float32", "int64"
    dims: tuple[int | str, ...]  # ints are fixed, strings are symbols from the stage spec

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> "TensorEntry":
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

    @classmethod
    def io_from_spec(cls, spec: StageSpec) -> dict[str, tuple[TensorEntry, ...]]:
        return {"inputs": tuple(TensorEntry.from_spec(t) for t in spec.inputs),
                "outputs": tuple(TensorEntry.from_spec(t) for t in spec.outputs)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision"] = self.precision.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r} is not supported "
                             f"(expected {MANIFEST_VERSION}); re-export the stage")

        def entries(items):
            return tuple(TensorEntry(e["name"], e["dtype"], tuple(e["dims"])) for e in items)

        return cls(**{**data, "precision": Precision(data["precision"]),
                      "inputs": entries(data["inputs"]), "outputs": entries(data["outputs"])})


def write_manifest(manifest: Manifest, stage_dir: str | os.PathLike) -> Path:
    """Write `stage_dir/manifest.json` atomically (temp file, fsync, rename)."""
    path = Path(stage_dir) / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(manifest.to_dict(), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when something above failed
    return path


def read_manifest(stage_dir: str | os.PathLike) -> Manifest:
    path = Path(stage_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {stage_dir} is not a complete export "
                                f"(run `cinema-trt export` for this stage)")
    return Manifest.from_dict(json.loads(path.read_text()))


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


def files_sha256(paths: list[Path]) -> str:
    """One SHA-256 over several files, in the given order (graph, then external data)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def exporter_versions() -> dict[str, str]:
    """Versions of every library that shaped the graph (the engines cache keys on them)."""
    import onnx
    import onnxruntime
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}
