"""Test tiers: CPU by default; `gpu` tests skip cleanly without CUDA.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, at
collection time, whenever no GPU is present: Triton kernels then run in the interpreter.

A tier that needs an optional package or binary asks for it through `require`: locally a
missing one skips with the install command; in CI (`CI=true`) it fails, so a CI run can
never pass with the serving or engine-build tier silently gone.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str, install: str) -> None:
    message = f"{what} is missing; install it with: {install}"
    if IN_CI:
        pytest.fail(f"{message} (CI must run this tier, not skip it)", pytrace=False)
    pytest.skip(message)


def require_module(name: str, install: str):
    """Import `name`, or skip (locally) / fail (CI) naming the install command."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"module {name!r}", install)


@pytest.fixture(scope="session")
def require():
    """`require(module, install_command)` for tests that need an optional package."""
    return require_module


def require_binary_on_path(name: str, install: str) -> str:
    """The path of program `name`, or skip (locally) / fail (CI) naming the install command."""
    import shutil

    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        _missing(f"program {name!r}", install)
    return str(found)


@pytest.fixture(scope="session")
def require_binary():
    """`require_binary(program, install_command)` for tests that run a program (haproxy,
    node); `missing(what, install_command)` for anything else a tier needs."""
    return require_binary_on_path


@pytest.fixture(scope="session")
def missing():
    return _missing


SERVE_EXTRA = 'pip install -e ".[serve]"'


@pytest.fixture(scope="session")
def read_video():
    """Decode an MP4 (path or bytes) to uint8 (T, H, W, 3), as a viewer of the output does
    (PyAV, which write_video encodes with); the library itself never reads videos."""
    import io

    import av
    import numpy as np

    def read(source) -> np.ndarray:
        data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
        with av.open(data) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    return read


@pytest.fixture(scope="session")
def serve_extra():
    """For modules that need tritonclient (Triton's config protobufs, the gRPC client):
    `pytestmark = pytest.mark.usefixtures("serve_extra")`."""
    return require_module("tritonclient.grpc", SERVE_EXTRA)


@pytest.fixture(scope="session")
def tiny_config():
    from cinema_trt.models.presets import get_preset

    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A save_models folder of the tiny preset (seed 0), shared by the serving suites."""
    from cinema_trt.models.factory import build_models, save_models
    from cinema_trt.models.presets import get_preset

    return save_models(build_models(get_preset("tiny"), seed=0),
                       tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="session")
def tritonserver_binary():
    """The server binary; skips (fails in CI) unless the serve extra provides it."""
    require_module("tritonclient.grpc", SERVE_EXTRA)
    from cinema_trt.serving.tritonserver_install import find_tritonserver

    try:
        return find_tritonserver()
    except FileNotFoundError as error:
        _missing(f"tritonserver ({error})", SERVE_EXTRA)


# --- the tiny preset exported once per session, for every suite -----------------------


@pytest.fixture(scope="session")
def tiny_models(tiny_config):
    from cinema_trt.models.factory import build_models

    # export_stages builds its models with the same seed, so these are the exported weights
    return build_models(tiny_config)




class TinyExports:
    """The tiny preset's exports, one folder per variant (dtype, fp8) for the whole session.

    Each stage is exported into its variant's folder at most once, when a test first asks
    for it, so a test that needs the connector alone does not pay for the whole preset
    (~40-80 s on 2 cores), and the suites never export the same graph twice.
    """

    def __init__(self, config, tmp_path_factory):
        self.config = config
        self.tmp_path_factory = tmp_path_factory
        self.folders: dict[tuple[str, bool], Path] = {}
        self.results: dict[tuple[str, bool], dict] = {}  # {stage: ExportResult} per folder

    def folder(self, stages=None, dtype: str = "fp32", fp8: bool = False):
        """(shared folder, {stage: ExportResult} of every stage exported into it so far)
        with `stages` (default: every stage) exported. Tests must not write into it."""
        from cinema_trt.export.driver import export_stages
        from cinema_trt.models.stages import resolve_graphs

        key = (dtype, fp8)
        if key not in self.folders:
            name = f"onnx_{dtype}" + ("_fp8" if fp8 else "")
            self.folders[key] = self.tmp_path_factory.mktemp(name)
            self.results[key] = {}
        out, done = self.folders[key], self.results[key]
        missing = [s for s in resolve_graphs(stages) if s not in done]
        if missing:
            for result in export_stages(self.config, out, stages=missing, dtype=dtype, fp8=fp8,
                                        progress=False):
                done[result.stage] = result
        return out, dict(done)

    def copy(self, stages, dest, dtype: str = "fp32", fp8: bool = False):
        """`dest` holding copies of exactly `stages` of the shared export (for tests whose
        result depends on which stages a folder holds, or that edit what they get)."""
        import shutil

        out, _ = self.folder(stages, dtype, fp8)
        dest = Path(dest)
        for stage in stages:
            shutil.copytree(out / stage, dest / stage)
        return dest


@pytest.fixture(scope="session")
def tiny_exports(tiny_config, tmp_path_factory):
    """The session's `TinyExports`: ask it for the stages and variant a test needs."""
    require_module("onnxruntime", 'pip install -e ".[onnx]"')
    return TinyExports(tiny_config, tmp_path_factory)


@pytest.fixture(scope="session")
def fp32_export(tiny_exports):
    """(export folder, {stage: ExportResult}) for every stage of tiny, fp32 (~40-80 s)."""
    return tiny_exports.folder()


@pytest.fixture(scope="session")
def fp8_export(tiny_exports):
    """(export folder, {stage: ExportResult}): the three FP8 recipes of tiny, calibrated,
    fp32 outside the Q/DQ pairs (~25 s)."""
    from cinema_trt.models.stages import FP8_GRAPHS

    return tiny_exports.folder(FP8_GRAPHS, fp8=True)


@pytest.fixture(scope="session")
def fp8_fp16_export(tiny_exports):
    """(export folder, {stage: ExportResult}): the FP8 recipes with fp16 outside the Q/DQ
    pairs (`export --fp8 --dtype fp16`), what TensorRT builds strongly typed (~30 s)."""
    from cinema_trt.models.stages import FP8_GRAPHS

    return tiny_exports.folder(FP8_GRAPHS, dtype="fp16", fp8=True)


@pytest.fixture(scope="session")
def fp16_export(tiny_exports):
    """(export folder, {stage: ExportResult}): every tiny stage exported in fp16 (~55 s)."""
    return tiny_exports.folder(dtype="fp16")



@pytest.fixture(scope="session")
def bf16_export(tiny_exports):
    """(export folder, {stage: ExportResult}): every tiny stage in bf16 (opset 22, whose
    Conv takes bfloat16)."""
    return tiny_exports.folder(dtype="bf16")


@pytest.fixture(scope="session")
def stage_manifest():
    """`write(stage_dir, config, stage=..., **fields) -> Manifest`: the exporter's manifest
    for a graph a test made by hand (or no graph at all). A build reads what an export is
    (spec, precision, compute dtype) from its manifest instead of re-deriving it from the
    graph, so a hand-made graph states it the way an export would."""
    from cinema_trt.export.manifest import Manifest, Precision, write_manifest
    from cinema_trt.models.fileio import onnx_sha256
    from cinema_trt.models.stages import lookup

    def write(stage_dir: Path, config, stage: str | None = None, **fields) -> Manifest:
        stage = stage or Path(stage_dir).name
        graph = Path(stage_dir) / "model.onnx"
        defaults = dict(stage=stage, preset=config.name, opset=20, precision="fp32",
                        source_sha256="0" * 64, versions={}, config=config.to_dict(),
                        **Manifest.io_from_spec(lookup(stage).spec(config)))
        if "onnx_sha256" not in fields:
            defaults["onnx_sha256"] = onnx_sha256(graph) if graph.is_file() else "0" * 64
        merged = {**defaults, **fields}
        manifest = Manifest(**{**merged, "precision": Precision.parse(merged["precision"])})
        Path(stage_dir).mkdir(parents=True, exist_ok=True)
        write_manifest(manifest, stage_dir)
        return manifest

    return write
