"""`manifest.json`: the one record of every artifact folder, export or build.

Layout of an export folder (what `cinema-trt build` reads):

    <out>/<stage>/model.onnx        the graph (+ model.onnx.data when weights exceed 2 GB)
    <out>/<stage>/manifest.json     this record
    <out>/<stage>/...               sidecar files the stage's runner needs (a split stage's
                                    glue graph: the HF config and token embeddings)

A build folder (`cinema-trt build`, any runtime) holds its plan or optimized graph and the
same manifest with `build` filled in: the export's record, unchanged, plus how it was
built (`BuildRecord`). So every artifact describes its stage (I/O, config, precision,
compute dtype) itself; a build never re-derives what the exporter recorded, and
`read_manifest` is the one reader of every folder.

A folder without a manifest is incomplete: the exporter (and a build) deletes the old
manifest before it touches the model files and writes the new one last, so a crash never
leaves a manifest describing half a model.

Over 300 lines on purpose: the schema, its one reader and writer and the one validity
check of an export are the record every folder shares, and read best together.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cinema_trt.models.backends import ORT, get_backend
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.fileio import atomic_write
from cinema_trt.models.precision import (  # Precision: re-exported
    WEIGHT_FORMATS,
    Precision,
    WeightFormat,
    precision_for,
)
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec, TensorSpec

from .validation import Validation

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
# the schema of every manifest; bump when a manifest (or what a build contains) changes.
# 2: one schema for exports and builds (a build is its export's record + `build`)
MANIFEST_VERSION = 2


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

    @property
    def dynamic(self) -> tuple[str, ...]:
        return tuple(d for d in self.dims if isinstance(d, str))


@dataclass(frozen=True)
class BuildRecord:
    """How a build folder was made from its export (engines/artifacts.py writes it)."""

    runtime: str  # the backend's name (models/backends.py)
    runtime_version: str
    precision: str  # the build's --precision
    build_config: dict[str, Any]
    profiles: dict[str, dict[str, list[int]]]  # input -> {min, opt, max}
    onnx_path: str  # the graph it was built from
    plan_file: str  # the built file, relative to the manifest's folder
    plan_sha256: str
    cache_key: str  # engines/manifest.py `engine_key`: covers the export record
    rebuild_command: str
    gpu_name: str | None = None  # the GPU that built it (none for TensorRT-RTX)
    compute_capability: str | None = None
    # the GPU architectures the plan runs on (models/backends.py names them): TensorRT, the
    # build GPU's; TensorRT-RTX, the targets it was compiled for. Empty for CPU runtimes
    targets: list[str] = field(default_factory=list)
    # the engine report (engines/report.py `summarize`): layers by kind and precision,
    # attention fusion, quantized linears, the builder's memory figures
    report: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # runtime-specific facts

    def __post_init__(self) -> None:
        get_backend(self.runtime)  # ValueError for a backend this cinema-trt does not have


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
    validation: Validation = Validation()  # the check against PyTorch (export/validation.py)
    # fp8: recipe and layers; weight-only (`weight_format`): format, method, block, layers,
    # excluded layers, initializer bytes before and after
    quantization: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    # the float type of the graph's arithmetic (outside Q/DQ pairs): "float32", "float16"
    # or "bfloat16"; its inputs and outputs are the spec's dtypes whatever this is
    compute_dtype: str = "float32"
    # files beside the graph that its runner reads (a split stage's glue, models/stages.py:
    # HF config and token embeddings): name -> sha256, checked when they are loaded
    sidecars: dict[str, str] = field(default_factory=dict)
    build: BuildRecord | None = None  # None: an export; else how this build was made

    @property
    def onnxruntime_runs(self) -> bool:
        """Whether ONNX Runtime runs this folder's model: an export's graph or an ORT
        build's; not a TensorRT plan."""
        return self.build is None or self.build.runtime == ORT.name

    @property
    def weight_format(self) -> WeightFormat | None:
        """The weight-only format of its integer weights (`quantization`, written by
        export/driver.py from `export --weight-only`); None for float or FP8 weights."""
        name = self.quantization.get("format")
        return next((f for f in WEIGHT_FORMATS if f.name == name), None)

    @property
    def export_flags(self) -> str:
        """The `cinema-trt export` flags that made its graph's types: --dtype, --fp8,
        --weight-only (with its method and INT4 block)."""
        return export_flags(self.to_dict())

    @property
    def model_file(self) -> str:
        """The file to run, relative to the folder: the graph, or the build's plan."""
        return self.build.plan_file if self.build else MODEL_FILE

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
        data["validation"] = self.validation.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        # fp32 | fp16 | bf16: what the graph computes in (export/dtype.py); fp8: FP8 E4M3
        # Q/DQ around the recipe's Linear layers and `compute_dtype` elsewhere
        precision = Precision.parse(data["precision"])

        def entries(items):
            return tuple(TensorEntry(e["name"], e["dtype"], tuple(e["dims"])) for e in items)

        build = data.get("build")
        return cls(**{**data, "precision": precision, "inputs": entries(data["inputs"]),
                      "outputs": entries(data["outputs"]),
                      "validation": Validation.from_dict(data.get("validation", {})),
                      "build": BuildRecord(**build) if build is not None else None})


def write_manifest(manifest: Manifest, stage_dir: str | os.PathLike) -> Path:
    """Write `stage_dir/manifest.json` atomically (temp file, fsync, rename)."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    return atomic_write(Path(stage_dir) / MANIFEST_FILE, text)


def stage_folders(folder: str | os.PathLike) -> list[Path]:
    """`folder` itself when it holds a manifest, else its subfolders that do (one per
    stage; a folder without one is incomplete), in name order."""
    folder = Path(folder)
    if (folder / MANIFEST_FILE).is_file():
        return [folder]
    return [p.parent for p in sorted(folder.glob(f"*/{MANIFEST_FILE}"))]


def read_manifest(stage_dir: str | os.PathLike) -> Manifest:
    """The manifest of an export or build folder (`stage_dir/manifest.json`); a manifest of
    an older cinema-trt is refused with the command that remakes its folder."""
    path = Path(stage_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {stage_dir} is not a complete export or "
                                f"build (run `cinema-trt export`, then `cinema-trt build`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); remake the folder") from None
    version = data.get("version", data.get("format_version"))
    if version != MANIFEST_VERSION or "format_version" in data:
        raise ValueError(f"{path}: manifest version {version!r} was written by another "
                         f"cinema-trt (this one reads {MANIFEST_VERSION}); remake it with:\n"
                         f"  {_remake_command(data, Path(stage_dir))}")
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a manifest of this cinema-trt ({error}); remake it "
                         f"with:\n  {_remake_command(data, Path(stage_dir))}") from None


def _remake_command(data: dict[str, Any], stage_dir: Path) -> str:
    """The command that writes `stage_dir` again: a build's own rebuild command, else the
    export command of its preset, stage and precision."""
    for record in (data.get("build") or {}, data):  # nested now; top-level in old engines
        if "rebuild_command" in record:
            return record["rebuild_command"]
    return (f"cinema-trt export --preset {data.get('preset', 'PRESET')} --out "
            f"{stage_dir.parent} {export_flags(data)} --stages "
            f"{data.get('stage', stage_dir.name)}")


def export_flags(data: dict[str, Any]) -> str:
    """The export flags of a manifest's record (a dict: an older one may not parse)."""
    try:
        dtype = precision_for(data.get("compute_dtype", "float32")).value
    except ValueError:  # a damaged record: the default export
        dtype = "fp32"
    flags = f"--dtype {dtype}" + (" --fp8" if data.get("precision") == "fp8" else "")
    quantization = data.get("quantization") or {}
    if quantization.get("format") in {f.name for f in WEIGHT_FORMATS}:
        flags += (f" --weight-only {quantization['format']} --weight-only-method "
                  f"{quantization.get('method', 'rtn_dq')}")
        if quantization.get("block_size"):
            flags += f" --weight-only-block {quantization['block_size']}"
    return flags


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
    if manifest.build is not None:  # its graph is not the exported one the hashes describe
        raise ValueError(f"{stage_dir} is a `cinema-trt build` folder "
                         f"({manifest.build.runtime}), not an export; pass the export folder "
                         f"it was built from ({Path(manifest.build.onnx_path).parent})")
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


def check_sidecars(stage_dir: str | os.PathLike) -> None:
    """Each sidecar file the folder's manifest records (a split stage's glue) that is there
    must hash as recorded: the graph and its glue are one model, and a swapped file would
    give fluent wrong answers. A folder without a manifest records nothing to check."""
    from cinema_trt.models.fileio import sha256_file

    stage_dir = Path(stage_dir)
    if not (stage_dir / MANIFEST_FILE).is_file():
        return
    manifest = read_manifest(stage_dir)
    for name, digest in manifest.sidecars.items():
        path = stage_dir / name
        if path.is_file() and sha256_file(path) != digest:
            raise ValueError(f"{path} does not match the sha256 that {stage_dir} recorded at "
                             f"export; it belongs to another model. Re-export with --stages "
                             f"{manifest.stage}")


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
