"""Export fixtures: one request with its torch-pipeline video, and PSNR. The exported tiny
graphs themselves (fp32, fp16, FP8) are session fixtures of the root conftest, shared by
every suite."""

from __future__ import annotations

import pytest


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
