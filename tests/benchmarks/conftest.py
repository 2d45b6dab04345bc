"""The tiny connector of the session's fp32 export (tests/conftest.py), alone in its folder
for the benchmark tests: the ORT thread option is tested on it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def exported(tiny_exports, tmp_path_factory):
    return tiny_exports.copy(["connector"], tmp_path_factory.mktemp("onnx"))
