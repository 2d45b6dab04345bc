"""Shared serving fixtures: tiny weights on disk, and a guard for tests that start a server."""

from __future__ import annotations

import pytest

from cinema_trt.models.factory import build_models, save_models
from cinema_trt.models.presets import get_preset


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A save_models folder of the tiny preset (seed 0)."""
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
