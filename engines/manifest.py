"""`manifest.json` beside every built engine: what built it, for what, and how to rebuild it.

An engine is reused only when its cache key matches: the hash of the ONNX bytes (external
weights included), the build config (targets included), the profiles, the backend, its
version and the build GPU's compute capability (none for TensorRT-RTX, which builds on any
machine). A plan loads only in the backend and version that built it, on a GPU among its
`targets`; otherwise `validate_manifest` refuses with the exact command that rebuilds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from cinema_trt.models import cache as artifact_cache
from cinema_trt.models.fileio import atomic_write, onnx_sha256, sha256_file

from .config import BuildConfig

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
# bump when the builder changes what an engine contains. 2: backends, targets, reports
FORMAT_VERSION = 2


class EngineMismatchError(ValueError):
    """An engine that cannot run here (other runtime version, GPU, or changed plan)."""


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime that builds or loads an engine, and the GPU it runs on."""

    runtime: str  # "tensorrt" | "tensorrt-rtx" | "onnxruntime" (the backend)
    version: str
    gpu_name: str | None = None
    compute_capability: str | None = None  # "9.0"; None for CPU runtimes


@dataclass(frozen=True)
class EngineManifest:
    stage: str
    runtime: str
    runtime_version: str
    precision: str
    build_config: dict[str, Any]
    profiles: dict[str, dict[str, list[int]]]  # input -> {min, opt, max}
    inputs: list[dict[str, Any]]  # [{name, dtype, dims}]
    outputs: list[dict[str, Any]]
    onnx_path: str
    onnx_sha256: str
    plan_file: str  # relative to the manifest's folder
    plan_sha256: str
    cache_key: str
    rebuild_command: str
    gpu_name: str | None = None  # the GPU that built it (none for TensorRT-RTX)
    compute_capability: str | None = None
    # the GPU architectures the plan runs on ("sm89", ...): TensorRT, the build GPU's;
    # TensorRT-RTX, the targets it was compiled for. Empty for CPU runtimes
    targets: list[str] = field(default_factory=list)
    # the engine report (engines/report.py `summarize`): layers by kind and precision,
    # attention fusion, quantized linears, the builder's memory figures
    report: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # runtime-specific facts; ORT builds carry "export_manifest", the export manifest they
    # were built from, which `cinema_trt.export.manifest.read_stage` reads
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> EngineManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"{where}: missing keys {missing}; rebuild the engine")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise EngineMismatchError(
                f"{where}: manifest format {data.get('format_version')} is not "
                f"{FORMAT_VERSION}; rebuild with:\n  {data['rebuild_command']}")
        return cls(**{k: v for k, v in data.items() if k in names})


# --- hashing ----------------------------------------------------------------------------


def artifact_sha256(path: str | os.PathLike) -> str:
    """Hash of a built artifact: a plan file, or an ONNX model with its external data."""
    path = Path(path)
    return onnx_sha256(path) if path.suffix == ".onnx" else sha256_file(path)


def cache_key(stage: str, onnx_digest: str, config: BuildConfig,
              profiles: dict[str, Any], runtime: RuntimeInfo) -> str:
    """The key an engine is reused under; any change to what decides the engine changes it."""
    payload = {"format": FORMAT_VERSION, "stage": stage, "onnx": onnx_digest,
               "build": config.cache_fields(), "profiles": profiles_to_json(profiles),
               "runtime": runtime.runtime, "version": runtime.version,
               "compute_capability": runtime.compute_capability}
    return artifact_cache.cache_key(payload)  # the artifact cache's key (models/cache.py)


def profiles_to_json(profiles: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """{name: (min, opt, max)} -> {name: {"min": [...], "opt": [...], "max": [...]}}."""
    out = {}
    for name, value in profiles.items():
        if isinstance(value, dict):
            out[name] = {k: list(value[k]) for k in ("min", "opt", "max")}
        else:
            out[name] = {k: list(v) for k, v in zip(("min", "opt", "max"), value, strict=True)}
    return out


# --- files ------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_manifest(folder: str | os.PathLike, manifest: EngineManifest) -> Path:
    return write_json_atomic(Path(folder) / MANIFEST_FILE, manifest.to_dict())


def read_manifest(folder_or_file: str | os.PathLike) -> EngineManifest:
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the engine with `cinema-trt build`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); rebuild the engine") from None
    return EngineManifest.from_dict(data, where=str(path))


# --- validation -------------------------------------------------------------------------


def rebuild_command(onnx_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    config: BuildConfig, stages: tuple[str, ...] = (),
                    profile: str | os.PathLike | None = None, runtime: str = "tensorrt") -> str:
    """The `cinema-trt build` command line that builds these engines again."""
    q = lambda value: shlex.quote(str(value))  # noqa: E731
    default = BuildConfig()
    parts = ["cinema-trt", "build", "--onnx", q(onnx_dir), "--out", q(out_dir),
             "--precision", config.precision.value]
    if profile:
        parts += ["--profile", q(profile)]
    if runtime != "tensorrt":
        parts += ["--runtime", "ort" if runtime == "onnxruntime" else runtime]
    if config.targets and runtime == "tensorrt-rtx":  # TensorRT's is the GPU it builds on
        parts += ["--targets", ",".join(config.targets)]
    if stages:
        parts += ["--stages", *stages]
    if config.workspace_gib != default.workspace_gib:
        parts += ["--workspace-gib", f"{config.workspace_gib:g}"]
    if config.optimization_level != default.optimization_level:
        parts += ["--optimization-level", str(config.optimization_level)]
    if config.timing_cache:
        parts += ["--timing-cache", q(config.timing_cache)]
    if config.weight_streaming:
        parts.append("--weight-streaming")
    if config.refittable:
        parts.append("--refittable")
    return " ".join(parts)


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def validate_manifest(manifest: EngineManifest, runtime: RuntimeInfo) -> None:
    """Refuse an engine built by another backend or version, or for other GPUs."""
    from .backends import BACKENDS, sm_name

    fix = f"Rebuild it with:\n  {manifest.rebuild_command}"
    backend = BACKENDS.get(runtime.runtime)
    name = backend.display if backend else {"onnxruntime": "ONNX Runtime"}.get(
        runtime.runtime, runtime.runtime)
    if manifest.runtime != runtime.runtime:
        raise EngineMismatchError(f"{manifest.stage}: engine was built for {manifest.runtime}, "
                                  f"not {runtime.runtime}. {fix}")
    if not _same_version(manifest.runtime_version, runtime.version):
        raise EngineMismatchError(
            f"{manifest.stage}: engine was built with {name} {manifest.runtime_version} but "
            f"this process has {name} {runtime.version}; engines only load in the version "
            f"that built them. {fix}")
    if runtime.compute_capability is None:  # a CPU runtime
        return
    here = sm_name(runtime.compute_capability)
    if here not in manifest.targets:
        built_on = (f" on {manifest.gpu_name} (sm {manifest.compute_capability})"
                    if manifest.gpu_name else "")
        raise EngineMismatchError(
            f"{manifest.stage}: engine was built{built_on} for GPU architectures "
            f"{', '.join(manifest.targets) or 'none'}, but this GPU, {runtime.gpu_name}, is "
            f"{here} (sm {runtime.compute_capability}); {name} kernels are compiled per "
            f"architecture. {fix}" + (f"\nwith {here} added to --targets" if backend
                                      and here in backend.targets else ""))
    if manifest.gpu_name is not None and manifest.gpu_name != runtime.gpu_name:
        log.warning("%s: engine was tuned on %s and runs on %s (same architecture); "
                    "rebuild for best speed: %s", manifest.stage, manifest.gpu_name,
                    runtime.gpu_name, manifest.rebuild_command)


def verify_plan(folder: str | os.PathLike, manifest: EngineManifest) -> Path:
    """The plan file's path, after checking its bytes are the ones the manifest describes."""
    plan = Path(folder) / manifest.plan_file
    if not plan.is_file():
        raise FileNotFoundError(f"{plan} not found; rebuild with:\n  {manifest.rebuild_command}")
    digest = artifact_sha256(plan)
    if digest != manifest.plan_sha256:
        raise EngineMismatchError(
            f"{plan}: sha256 {digest[:12]}... does not match the manifest's "
            f"{manifest.plan_sha256[:12]}... (the file changed after it was built). "
            f"Rebuild with:\n  {manifest.rebuild_command}")
    return plan


def cached_engine(folder: str | os.PathLike, key: str) -> Path | None:
    """The plan in `folder` if its manifest has cache key `key` and the plan is intact."""
    try:
        manifest = read_manifest(folder)
        if manifest.cache_key != key:
            return None
        return verify_plan(folder, manifest)
    except (FileNotFoundError, ValueError) as error:
        log.debug("no reusable engine in %s: %s", folder, error)
        return None
