"""Test tiers: CPU by default; `gpu` tests skip cleanly without CUDA.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, at
collection time, whenever no GPU is present: Triton kernels then run in the interpreter.
"""

from __future__ import annotations

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
    """The server binary; skips unless the serve extra (tritonclient + tritonserver) exists."""
    pytest.importorskip("tritonclient.grpc", reason="needs the serve extra")
    from cinema_trt.serving.server import find_tritonserver

    try:
        return find_tritonserver()
    except FileNotFoundError as error:
        pytest.skip(str(error))
