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
    require_module("tritonclient.grpc", 'pip install -e ".[serve]"')
    from cinema_trt.serving.server import find_tritonserver

    try:
        return find_tritonserver()
    except FileNotFoundError as error:
        _missing(f"tritonserver ({error})", 'pip install -e ".[serve]"')


# --- the tiny preset exported once per session, for every suite -----------------------


@pytest.fixture(scope="session")
def tiny_models(tiny_config):
    from cinema_trt.models.factory import build_models

    # export_stages builds its models with the same seed, so these are the exported weights
    return build_models(tiny_config)


@pytest.fixture(scope="session")
def fp32_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}) for every stage of tiny, fp32 (~60-80 s)."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_fp32")
    results = export_stages(tiny_config, out, progress=False)
    return out, {r.stage: r for r in results}


@pytest.fixture(scope="session")
def fp8_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}): the three FP8 recipes of tiny, calibrated
    (~25 s)."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_fp8")
    results = export_stages(tiny_config, out, stages=["dit", "connector", "mllm_text"], fp8=True,
                            progress=False)
    return out, {r.stage: r for r in results}


@pytest.fixture(scope="session")
def fp16_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}): every tiny stage exported in fp16 (~55 s)."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_fp16")
    results = export_stages(tiny_config, out, dtype="fp16", progress=False)
    return out, {r.stage: r for r in results}


@pytest.fixture(scope="session")
def bf16_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}): every tiny stage exported in bf16."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_bf16")
    results = export_stages(tiny_config, out, dtype="bf16", progress=False)
    return out, {r.stage: r for r in results}


@pytest.fixture(scope="session")
def fp8_fp16_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}): the three FP8 recipes of tiny with fp16
    outside the Q/DQ pairs (`export --fp8 --dtype fp16`), what FP8 engines are built from."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_fp8_fp16")
    results = export_stages(tiny_config, out, stages=["dit", "connector", "mllm_text"], fp8=True,
                            dtype="fp16", progress=False)
    return out, {r.stage: r for r in results}
