"""The whole pipeline on ONNX Runtime makes the same video as on PyTorch."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cinema_trt.export.mllm_split import composed_mllm_runner
from cinema_trt.export.ort import OrtRunner, ort_runners
from cinema_trt.models.factory import torch_runners
from cinema_trt.models.media import sample_references
from cinema_trt.models.pipeline import CinemaPipeline

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow


def test_ort_pipeline_matches_torch(fp32_export, tiny_models, request_and_reference, psnr):
    """>= 40 dB (measured ~90 dB): fp32 graphs differ from torch by ~1e-6 relative, at
    most one uint8 level on a few pixels. Another seed gives ~14 dB."""
    request, reference = request_and_reference
    pipeline = CinemaPipeline(tiny_models.config, ort_runners(fp32_export[0]),
                              tiny_models.processor)
    video = pipeline.generate(request)
    assert video.shape == reference.shape and video.dtype == np.uint8
    assert psnr(video, reference) >= 40.0


def test_fp8_stages_in_the_pipeline(fp8_export, fp32_export, tiny_models,
                                    request_and_reference, psnr):
    """FP8 DiT, connector and MLLM text on ORT (fp32 vision graph, torch VAE): >= 35 dB
    (measured ~53 dB; FP8 rounding compounds over the sampler steps). This mostly guards
    the DiT: on these random weights another prompt still gives ~50 dB, another seed ~14."""
    request, reference = request_and_reference
    fp8 = ort_runners(fp8_export[0])
    assert set(fp8) == {"dit", "connector"}  # a lone mllm_text is not a whole "mllm"
    mllm = composed_mllm_runner(OrtRunner(fp32_export[0] / "mllm_vision"),
                                OrtRunner(fp8_export[0] / "mllm_text"),
                                fp8_export[0] / "mllm_text")
    runners = {**torch_runners(tiny_models), **fp8, "mllm": mllm}
    video = CinemaPipeline(tiny_models.config, runners, tiny_models.processor).generate(request)
    value = psnr(video, reference)
    log.info("FP8 pipeline PSNR vs torch fp32: %.1f dB", value)
    assert value >= 35.0


def test_generate_cli_runs_on_the_exported_graphs(fp32_export, tmp_path, psnr):
    """`cinema-trt generate --runtime ort` writes the same frames as the torch runtime
    (PNG frames are lossless, so the comparison is the pipelines', not the codec's)."""
    from PIL import Image

    from cinema_trt.cli.main import main

    ref = str(sample_references()[1])
    common = ["generate", "--ref", ref, "--prompt", "a blue square spins", "--frames", "5",
              "--height", "32", "--width", "32", "--steps", "2", "--quiet"]
    assert main(common + ["-o", str(tmp_path / "torch")]) == 0
    assert main(common + ["--runtime", "ort", "--onnx", str(fp32_export[0]),
                          "-o", str(tmp_path / "ort")]) == 0

    def frames(folder):
        return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])

    torch_frames, ort_frames = frames(tmp_path / "torch"), frames(tmp_path / "ort")
    assert torch_frames.shape == ort_frames.shape == (5, 32, 32, 3)
    assert psnr(ort_frames, torch_frames) >= 40.0


def test_runtime_ort_without_an_export_folder_is_refused(tmp_path):
    from cinema_trt.cli.main import main

    ref = str(sample_references()[0])
    assert main(["generate", "--ref", ref, "--prompt", "x", "--runtime", "ort",
                 "-o", str(tmp_path / "v.mp4")]) == 2
