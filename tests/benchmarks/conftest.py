"""The tiny connector exported once for the benchmark tests (the fastest stage to export,
~5 s): the ONNX cache and the ORT thread option are tested on it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def exported(tiny_config, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from cinema_trt.export.driver import export_stages

    folder = tmp_path_factory.mktemp("onnx")
    export_stages(tiny_config, folder, stages=["connector"], progress=False)
    return folder
