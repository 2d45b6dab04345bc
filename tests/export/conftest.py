"""Shared, expensive fixtures: the tiny preset exported once per session (fp32: all six
graphs, ~60-80 s on 2 cores; FP8: dit, connector, mllm_text with calibration, ~25 s) and
the same seeded torch models."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tiny_config):
    from cinema_trt.models.factory import build_models

    # export_stages builds its models with the same seed, so these are the exported weights
    return build_models(tiny_config)


@pytest.fixture(scope="session")
def fp32_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}) for every stage of tiny, fp32."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_fp32")
    results = export_stages(tiny_config, out, progress=False)
    return out, {r.stage: r for r in results}


@pytest.fixture(scope="session")
def fp8_export(tiny_config, tmp_path_factory):
    """(export folder, {stage: ExportResult}) for the three FP8 recipes of tiny."""
    from cinema_trt.export.driver import export_stages

    out = tmp_path_factory.mktemp("onnx_fp8")
    results = export_stages(tiny_config, out, stages=["dit", "connector", "mllm_text"], fp8=True,
                            progress=False)
    return out, {r.stage: r for r in results}
