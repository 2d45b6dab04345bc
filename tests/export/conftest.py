"""Shared, expensive fixtures: the tiny preset exported once per session (fp32: all six
graphs, ~60-80 s on 2 cores; FP8: dit, connector, mllm_text with calibration, ~25 s), the
same seeded torch models, and one request with its torch-pipeline video."""

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


@pytest.fixture(scope="session")
def request_and_reference(tiny_models):
    """(request, video): two references, the preset's sampler defaults, torch fp32."""
    from cinema_trt.models.factory import torch_runners
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest

    refs = tuple(load_image(p) for p in sample_references()[:2])
    request = GenerationRequest.with_defaults(tiny_models.config,
                                              "A red circle and a blue square dance.", refs)
    pipeline = CinemaPipeline(tiny_models.config, torch_runners(tiny_models),
                              tiny_models.processor)
    return request, pipeline.generate(request)


def _psnr(a, b) -> float:
    import numpy as np

    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


@pytest.fixture(scope="session")
def psnr():
    """psnr(a, b): peak signal-to-noise ratio of two uint8 videos in dB (inf if equal)."""
    return _psnr
