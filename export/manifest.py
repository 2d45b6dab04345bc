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

from cinema_trt.models.dtypes import lookup

# re-exported: `cinema_trt.export.manifest.Precision` is the same enum as engines' and
# stays importable from here
from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.precision import Precision
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec, TensorSpec

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
MANIFEST_VERSION = 1
# where an ORT build's engine manifest carries the export manifest it was built from
CARRIED_MANIFEST_KEY = "export_manifest"


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # numpy spelling, e.g. "float32", "int64"
    dims: tuple[int | str, ...]  # ints are fixed, strings are symbols from the stage spec

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorEntry:
        return cls(spec.name, lookup(spec.dtype).name, tuple(spec.dims))

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
    onnx_sha256: str  # models/fileio.onnx_sha256: graph + external data; keys engine caches
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

    def stage_spec(self) -> StageSpec:
        """The stage's tensors as exported (names, dtypes, dims): what a build compiles for,
        read from the record rather than re-derived from the config."""
        def specs(entries: tuple[TensorEntry, ...]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(e.name, lookup(e.dtype).torch, tuple(e.dims))
                         for e in entries)
        return StageSpec(self.stage, specs(self.inputs), specs(self.outputs))

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


@dataclass(frozen=True)
class ExportExpectation:
    """What an export must have been made from to stand for a stage; None is not checked."""

    config: CinemaConfig | None = None  # the architecture (sampler defaults may differ)
    precision: Precision | None = None
    compute_dtype: str | None = None  # "float32" | "float16" | "bfloat16"
    source_sha256: str | None = None  # the stage's weights (state_dict_sha256)
    versions: dict[str, str] | None = None  # exporter_versions()


class StaleExportError(ValueError):
    """An export folder that does not stand for what was asked; `reason` says why in short
    (the benchmark's cache logs it), the message adds the folder and the fix."""

    def __init__(self, stage_dir: Path, reason: str, detail: str = ""):
        super().__init__(f"{stage_dir}: {reason}{detail}; re-export the stage (cinema-trt "
                         "export) and rebuild what was made from it")
        self.reason = reason


def check_export(stage_dir: str | os.PathLike,
                 expect: ExportExpectation = ExportExpectation(),
                 graph_hash: bool = True) -> Manifest:
    """The manifest of a complete export folder that matches `expect` and whose graph (with
    its external data) still hashes to what the exporter recorded: the one validity check of
    an export, used by the engine build, the repository generator, serving, the demo and the
    benchmark's cache. FileNotFoundError: incomplete; StaleExportError: anything else.

    graph_hash=False skips the hash: the engine build keys its cache on the graph's own
    hash and builds a graph edited after export (polygraphy surgeon, say) as it is."""
    from cinema_trt.models.fileio import onnx_sha256

    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    if not (stage_dir / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{stage_dir}: manifest.json but no {MODEL_FILE}; re-export "
                                "the stage")
    checks = ((expect.precision, manifest.precision, f"precision {manifest.precision.value}"),
              (expect.compute_dtype, manifest.compute_dtype,
               f"computes in {manifest.compute_dtype}"),
              (expect.versions, manifest.versions, f"exporter versions {manifest.versions}"),
              (expect.source_sha256, manifest.source_sha256, "other weights"))
    for expected, found, reason in checks:
        if expected is not None and expected != found:
            wanted = getattr(expected, "value", expected)  # Precision -> "fp16"
            raise StaleExportError(stage_dir, reason, f" (expected {wanted})")
    if expect.config is not None:
        from cinema_trt.models.factory import check_same_architecture

        try:
            check_same_architecture(expect.config, CinemaConfig.from_dict(manifest.config),
                                    str(stage_dir))
        except ValueError as error:
            raise StaleExportError(stage_dir, "another model architecture",
                                   f" ({error})") from None
    digest = onnx_sha256(stage_dir / MODEL_FILE) if graph_hash else manifest.onnx_sha256
    if digest != manifest.onnx_sha256:
        raise StaleExportError(stage_dir, "model files changed since export",
                               f": sha256 of {MODEL_FILE} and its data is {digest}, but its "
                               f"manifest records {manifest.onnx_sha256}")
    return manifest


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
