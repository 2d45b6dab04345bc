"""The whole pipeline on ONNX Runtime makes the same video as on PyTorch."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cinema_trt.export.ort import OrtRunner, ort_runners
from cinema_trt.export.stage_runners import stage_runners
from cinema_trt.models.factory import torch_runners
from cinema_trt.models.media import sample_references
from cinema_trt.models.pipeline import CinemaPipeline
from cinema_trt.models.stages import FP8_GRAPHS, MLLM

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow

# PSNR gates against the torch fp32 video, from benchmarks/results/fidelity-tiny-20261129.json
# (`python -m cinema_trt.benchmarks.fidelity`: 6 seeds x 2 prompts on tiny; what moves the
# video: another prompt 56.4-58.7 dB, other references 50.9-52.0, one reference fewer
# 49.2-51.4, another seed 13.8-14.0).
# fp32 graphs measured 87.6-93.0 dB (the CLI tests' 32x32 2-step request: >= 87.0, half of
# them identical). 80 dB sits 7.6 dB under the worst and 21 dB over any of those changes: a
# graph that loses the prompt, a reference or one stage's precision (fp16 graphs: ~61 dB)
# fails it.
FP32_MIN_PSNR = 80.0
# FP8 DiT, connector and MLLM text measured 50.7-53.2 dB: FP8 rounding moves the video as
# much as dropping a reference does, so this gate cannot see lost conditioning (the stage
# parity gates do, tests/export/test_check_inputs.py); 48 dB, 2.7 under the worst, catches a
# broken FP8 recipe or scale (a wrong stage gives ~14 dB).
FP8_MIN_PSNR = 48.0


def test_ort_pipeline_matches_torch(fp32_export, tiny_models, request_and_reference, psnr):
    """>= FP32_MIN_PSNR: fp32 graphs differ from torch by ~1e-6 relative, at most one uint8
    level on a few pixels."""
    request, reference = request_and_reference
    pipeline = CinemaPipeline(tiny_models.config, ort_runners(fp32_export[0]),
                              tiny_models.processor)
    video = pipeline.generate(request)
    assert video.shape == reference.shape and video.dtype == np.uint8
    value = psnr(video, reference)
    log.info("ORT fp32 pipeline PSNR vs torch fp32: %.1f dB", value)
    assert value >= FP32_MIN_PSNR


def test_fp8_stages_in_the_pipeline(fp8_export, fp32_export, tiny_models,
                                    request_and_reference, psnr):
    """FP8 DiT, connector and MLLM text on ORT (fp32 vision graph, torch VAE): >=
    FP8_MIN_PSNR (FP8 rounding compounds over the sampler steps)."""
    request, reference = request_and_reference
    fp8 = ort_runners(fp8_export[0])
    assert MLLM.name not in fp8  # a lone text graph is not a whole MLLM
    # the MLLM's graphs without an FP8 recipe (vision) in fp32, the glue FP8's
    found = {g.name: (fp8_export if g.name in FP8_GRAPHS else fp32_export)[0] / g.name
             for g in MLLM.graphs}
    mllm = stage_runners(found, lambda name: OrtRunner(found[name]), glue=fp8_export[0])
    runners = {**torch_runners(tiny_models), **fp8, **mllm}
    video = CinemaPipeline(tiny_models.config, runners, tiny_models.processor).generate(request)
    value = psnr(video, reference)
    log.info("FP8 pipeline PSNR vs torch fp32: %.1f dB", value)
    assert value >= FP8_MIN_PSNR


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
    assert psnr(ort_frames, torch_frames) >= FP32_MIN_PSNR


def test_runtime_ort_without_an_export_folder_is_refused(tmp_path):
    from cinema_trt.cli.main import main

    ref = str(sample_references()[0])
    assert main(["generate", "--ref", ref, "--prompt", "x", "--runtime", "ort",
                 "-o", str(tmp_path / "v.mp4")]) == 2
