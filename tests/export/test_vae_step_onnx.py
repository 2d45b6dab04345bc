"""The chunked decoder's step module (models/vae_chunks.py) exports to ONNX with dynamic
batch, frames, height and width, and ONNX Runtime running it chunk by chunk, feeding each
chunk's next_state.* back as state.*, gives the one-shot PyTorch decode.

A test of the module only: the exporter does not export it yet (the stage registry does
not name it); `export_step` (benchmarks/vae_chunks.py) exports it as trace_to_onnx would,
with the dynamic shapes by position. Tolerance: the exporter's fp32 gate (export/check.py
FP32_TOLERANCE, 1e-4 of the output scale); benchmarks/results/cpu-2core-vae-chunks-*
measured 1.4e-6 on latents (1, 16, 5, 5, 6) in chunks of 2, this test's first case.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cinema_trt.benchmarks.vae_chunks import export_step
from cinema_trt.export.check import FP32_TOLERANCE
from cinema_trt.models.vae_chunks import FIRST_CHUNK_EXTRA_FRAMES, DecoderStep, step_spec
from cinema_trt.models.video_vae import create_vae

pytestmark = pytest.mark.slow  # the dynamo export takes ~25 s on 2 cores


def run_chunks(session, spec, z: np.ndarray, chunk: int, states: list[np.ndarray]):
    names = spec.input_names[2:]
    first = np.ones(1, dtype=bool)
    pieces = []
    for start in range(0, z.shape[2], chunk):
        feeds = {"latents": z[:, :, start:start + chunk], "first": first,
                 **dict(zip(names, states, strict=True))}
        video, *states = session.run(None, feeds)
        pieces.append(video[:, :, FIRST_CHUNK_EXTRA_FRAMES:] if start == 0 else video)
        first = np.zeros(1, dtype=bool)
    return np.concatenate(pieces, axis=2)


@torch.no_grad()
def test_onnx_runtime_runs_the_step_chunk_by_chunk_like_torch_one_shot(tiny_config, tmp_path):
    import onnxruntime as ort

    vae = create_vae(tiny_config.vae, seed=0)
    step = DecoderStep(vae.decoder).eval()
    spec = step_spec(tiny_config.vae)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 16, 3, 3, 4, generator=generator)
    model = export_step(step, spec, (example, torch.tensor([True]),
                                     *step.initial_states(example)))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # shapes other than the traced one: batch, frames, height and width all differ
    for batch, frames, height, width, chunk in ((1, 5, 5, 6, 2), (3, 4, 2, 3, 3)):
        z = torch.randn(batch, 16, frames, height, width, generator=generator)
        reference = vae.decode(z).numpy()
        states = [s.numpy() for s in step.initial_states(z)]
        out = run_chunks(session, spec, z.numpy(), chunk, states)
        assert out.shape == reference.shape
        error = np.abs(out - reference).max() / np.abs(reference).max()
        assert error <= FP32_TOLERANCE, f"{(batch, frames, height, width, chunk)}: {error}"
