"""What a build adds to its export's manifest (export/manifest.py `BuildRecord`): the
cache key it is reused under, the command that rebuilds it, and the checks that it runs here.

An engine is reused only when its cache key matches: the export's whole record (so a
re-export that changed the manifest but not the graph bytes rebuilds), the hash of the ONNX
bytes (external weights included), the build config (targets included), the profiles, the
backend, its version and the build GPU's compute capability (none for TensorRT-RTX, which
builds on any machine). A plan loads only in the backend and version that built it, on a GPU
among its `targets`; otherwise `validate_manifest` refuses with the exact command that
rebuilds it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from cinema_trt.export.manifest import MANIFEST_VERSION, BuildRecord, Manifest, read_manifest
from cinema_trt.models import cache as artifact_cache
from cinema_trt.models.backends import TENSORRT, get_backend, sm_name
from cinema_trt.models.fileio import atomic_write, onnx_sha256, sha256_file
from cinema_trt.models.presets import Decoding

from .config import BuildConfig

log = logging.getLogger(__name__)


class EngineMismatchError(ValueError):
    """An engine that cannot run here (other runtime version, GPU, or changed plan)."""


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime that builds or loads an engine, and the GPU it runs on."""

    runtime: str  # the backend's name (models/backends.py)
    version: str
    gpu_name: str | None = None
    compute_capability: str | None = None  # "9.0"; None for CPU runtimes


# --- hashing ----------------------------------------------------------------------------


def artifact_sha256(path: str | os.PathLike) -> str:
    """Hash of a built artifact: a plan file, or an ONNX model with its external data."""
    path = Path(path)
    return onnx_sha256(path) if path.suffix == ".onnx" else sha256_file(path)


def engine_key(export: Manifest, onnx_digest: str, config: BuildConfig,
              profiles: dict[str, Any], runtime: RuntimeInfo) -> str:
    """The key an engine is reused under; any change to what decides the engine, or to the
    export record its manifest repeats, changes it."""
    payload = {"format": MANIFEST_VERSION, "export": export.to_dict(), "onnx": onnx_digest,
               "build": config.cache_fields(), "profiles": profiles_to_json(profiles),
               "runtime": runtime.runtime, "version": runtime.version,
               "compute_capability": runtime.compute_capability}
    return artifact_cache.cache_key(payload)  # the one key function (models/cache.py)


def profiles_to_json(profiles: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """{name: (min, opt, max)} -> {name: {"min": [...], "opt": [...], "max": [...]}}."""
    return {name: {k: list(v) for k, v in zip(("min", "opt", "max"), value, strict=True)}
            for name, value in profiles.items()}


# --- files ------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- validation -------------------------------------------------------------------------


def rebuild_command(onnx_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    config: BuildConfig, stages: tuple[str, ...] = (),
                    profile: str | os.PathLike | None = None, runtime: str = TENSORRT.name,
                    decoding: Decoding | None = None) -> str:
    """The `cinema-trt build` command line that builds these engines again."""
    q = lambda value: shlex.quote(str(value))  # noqa: E731
    default = BuildConfig()
    parts = ["cinema-trt", "build", "--onnx", q(onnx_dir), "--out", q(out_dir),
             "--precision", config.precision.value]
    if profile:
        parts += ["--profile", q(profile)]
    if runtime != TENSORRT.name:
        parts += ["--runtime", runtime]
    if config.targets and get_backend(runtime).builds_without_gpu:  # else: the build GPU
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
    return " ".join(parts + decoding_flags(decoding or Decoding()))


def with_decoding(command: str, decoding: Decoding) -> str:
    """A build command line with `decoding`'s flags in place of any it had (an overlap
    left behind by a tiled build would make an untiled rebuild invalid)."""
    words, kept = shlex.split(command), []
    flags = {"--decode-chunk", "--decode-tile", "--decode-overlap"}
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in flags:
            skip = True
        else:
            kept.append(word)
    return shlex.join(kept + decoding_flags(decoding))


def decoding_flags(decoding: Decoding) -> list[str]:
    """The flags of `cinema-trt build`/`repo`/`generate` that choose `decoding`
    (cli/decoding.py); settings it leaves to the config are left out."""
    flags = []
    for flag, value in (("--decode-chunk", decoding.chunk), ("--decode-tile", decoding.tile),
                        ("--decode-overlap", decoding.overlap)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def built(manifest: Manifest, folder: str | os.PathLike = "") -> BuildRecord:
    """The build record of a build folder's manifest; an export folder is refused."""
    if manifest.build is None:
        raise EngineMismatchError(f"{folder or manifest.stage} is an export, not a build; "
                                  f"build it with `cinema-trt build`")
    return manifest.build


def check_streaming_budget(build: BuildRecord, graph: str, budget: int) -> None:
    """A weight-streaming budget needs an engine built for it (`cinema-trt build
    --weight-streaming`); ValueError with the command that builds one otherwise."""
    if budget < 0:
        raise ValueError(f"{graph}: weight_streaming_budget={budget} must be >= 0 bytes")
    if not build.build_config.get("weight_streaming"):
        command = build.rebuild_command
        if "--weight-streaming" not in command:
            command += " --weight-streaming"
        raise ValueError(f"{graph}: a weight-streaming budget needs an engine built with "
                         f"weight streaming; this one was not. Rebuild it with:\n  {command}")


def validate_manifest(manifest: Manifest, runtime: RuntimeInfo) -> None:
    """Refuse an engine built by another backend or version, or for other GPUs."""
    build, stage = built(manifest), manifest.stage
    fix = f"Rebuild it with:\n  {build.rebuild_command}"
    backend = get_backend(runtime.runtime)
    name = backend.display
    if build.runtime != runtime.runtime:
        raise EngineMismatchError(f"{stage}: engine was built for {build.runtime}, "
                                  f"not {runtime.runtime}. {fix}")
    if not _same_version(build.runtime_version, runtime.version):
        raise EngineMismatchError(
            f"{stage}: engine was built with {name} {build.runtime_version} but "
            f"this process has {name} {runtime.version}; engines only load in the version "
            f"that built them. {fix}")
    if runtime.compute_capability is None:  # a CPU runtime
        return
    here = sm_name(runtime.compute_capability)
    if here not in build.targets:
        built_on = (f" on {build.gpu_name} (sm {build.compute_capability})"
                    if build.gpu_name else "")
        raise EngineMismatchError(
            f"{stage}: engine was built{built_on} for GPU architectures "
            f"{', '.join(build.targets) or 'none'}, but this GPU, {runtime.gpu_name}, is "
            f"{here} (sm {runtime.compute_capability}); {name} kernels are compiled per "
            f"architecture. {fix}" + (f"\nwith {here} added to --targets"
                                      if here in backend.targets else ""))
    if build.gpu_name is not None and build.gpu_name != runtime.gpu_name:
        log.warning("%s: engine was tuned on %s and runs on %s (same architecture); "
                    "rebuild for best speed: %s", stage, build.gpu_name,
                    runtime.gpu_name, build.rebuild_command)


def verify_plan(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """The plan file's path, after checking its bytes are the ones the manifest describes."""
    build = built(manifest, folder)
    plan = Path(folder) / build.plan_file
    if not plan.is_file():
        raise FileNotFoundError(f"{plan} not found; rebuild with:\n  {build.rebuild_command}")
    digest = artifact_sha256(plan)
    if digest != build.plan_sha256:
        raise EngineMismatchError(
            f"{plan}: sha256 {digest[:12]}... does not match the manifest's "
            f"{build.plan_sha256[:12]}... (the file changed after it was built). "
            f"Rebuild with:\n  {build.rebuild_command}")
    return plan


def cached_engine(folder: str | os.PathLike, key: str) -> Path | None:
    """The plan in `folder` if its manifest has cache key `key` and the plan is intact."""
    try:
        manifest = read_manifest(folder)
        if manifest.build is None or manifest.build.cache_key != key:
            return None
        return verify_plan(folder, manifest)
    except (FileNotFoundError, ValueError) as error:
        log.debug("no reusable engine in %s: %s", folder, error)
        return None
