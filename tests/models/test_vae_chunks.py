"""Chunked causal decoding (models/vae_chunks.py): equal to the one-shot decode, and only
because the state is carried.

Tolerance: chunked and one-shot run the same float32 arithmetic except that the convs sum
over a different number of frames (another summation order): measured max |chunked -
one-shot| / max |one-shot| = 0 .. 1.6e-6 on the cases below (tiny preset, seed 0); the
gate, 1e-5 of the output scale, is the issue's. Dropping the state moves the output by
0.95x its scale (zeroed between chunks) or 1.03x (every chunk treated as the first), so
the gate catches either with 5 orders of magnitude to spare.
"""

from __future__ import annotations

import pytest
import torch

from cinema_trt.models.specs import tensor_bytes
from cinema_trt.models.vae_chunks import (
    FIRST_CHUNK_EXTRA_FRAMES,
    STATE_INPUT,
    STATE_OUTPUT,
    DecoderStep,
    iter_decode,
    state_spec,
    step_spec,
)
from cinema_trt.models.video_vae import VideoVAE, create_vae

GATE = 1e-5  # of the output scale (max |one-shot|)
DROPPED = 0.1  # a decode without its state is off by more (measured 0.95, 1.03)


@pytest.fixture(scope="module")
def vae(tiny_config) -> VideoVAE:
    return create_vae(tiny_config.vae, seed=0)


def latents(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, height, width, generator=generator)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).abs().max() / reference.abs().max())


# (latent frames, height, width) x chunk sizes: one frame, odd sizes, a chunk longer than
# the video, chunks that do not divide the frame count
@pytest.mark.parametrize("frames,height,width,chunks", [
    (1, 4, 6, (1, 2)),
    (3, 5, 4, (1, 2, 3)),
    (4, 3, 7, (1, 3)),
    (6, 4, 4, (1, 2, 4, 5)),
])
@torch.no_grad()
def test_chunked_decode_equals_one_shot(vae, frames, height, width, chunks):
    z = latents(2, frames, height, width)
    reference = vae.decode(z)
    for chunk in chunks:
        out = vae.decode(z, chunk=chunk)
        assert out.shape == reference.shape
        assert relative_error(out, reference) <= GATE, f"chunk={chunk}"


def _decode_without_state(vae: VideoVAE, z: torch.Tensor, chunk: int, mode: str):
    """A chunked decode that loses its state between chunks: `zeroed` passes zero states,
    `restarted` treats every chunk as the first."""
    step = DecoderStep(vae.decoder)
    pieces = []
    for start in range(0, z.shape[2], chunk):
        first = torch.tensor([start == 0 or mode == "restarted"])
        video, *_ = step(z[:, :, start:start + chunk], first, *step.initial_states(z))
        pieces.append(video[:, :, FIRST_CHUNK_EXTRA_FRAMES:] if start == 0 else video)
    return torch.cat(pieces, dim=2)


@pytest.mark.parametrize("mode", ["zeroed", "restarted"])
@torch.no_grad()
def test_a_decode_that_drops_the_state_fails_the_gate(vae, mode):
    z = latents(1, 4, 4, 5)
    reference = vae.decode(z)
    error = relative_error(_decode_without_state(vae, z, 2, mode), reference)
    assert error > DROPPED
    assert relative_error(vae.decode(z, chunk=2), reference) <= GATE


@torch.no_grad()
def test_chunks_arrive_in_order_with_their_frame_counts(vae):
    z = latents(1, 6, 3, 4)
    pieces = list(iter_decode(vae.decoder, z, 4))
    # the first chunk of k latent frames gives 1 + 4 (k - 1) frames, later ones 4 k
    assert [p.shape[2] for p in pieces] == [13, 8]
    reference = vae.decode(z)
    torch.testing.assert_close(pieces[1], reference[:, :, 13:], atol=GATE, rtol=0)


@torch.no_grad()
def test_first_chunk_is_the_one_shot_output_behind_copies_of_frame_0(vae):
    """The step graph repeats frame 0 through the temporal upsamples instead of branching
    on `first`; the copies are exactly frame 0, which is why they may be dropped."""
    z = latents(1, 2, 3, 3)
    step = DecoderStep(vae.decoder)
    video, *_ = step(z, torch.tensor([True]), *step.initial_states(z))
    reference = vae.decode(z)
    assert video.shape[2] == reference.shape[2] + FIRST_CHUNK_EXTRA_FRAMES
    for copy in range(FIRST_CHUNK_EXTRA_FRAMES + 1):
        torch.testing.assert_close(video[:, :, copy], reference[:, :, 0], atol=GATE, rtol=0)
    torch.testing.assert_close(video[:, :, FIRST_CHUNK_EXTRA_FRAMES:], reference, atol=GATE,
                               rtol=0)


@pytest.mark.parametrize("batch,height,width", [(1, 32, 48), (2, 24, 16)])
@torch.no_grad()
def test_state_spec_is_what_the_step_carries(vae, tiny_config, batch, height, width):
    z = latents(batch, 2, height // 8, width // 8)
    step = DecoderStep(vae.decoder)
    _, *next_states = step(z, torch.tensor([True]), *step.initial_states(z))
    specs = state_spec(tiny_config.vae, batch, height, width)
    assert [s.name for s in specs] == [STATE_INPUT + n for n in step.state_names]
    assert [s.dims for s in specs] == [tuple(t.shape) for t in next_states]
    assert all(s.dtype == torch.float32 for s in specs)
    assert tensor_bytes(specs) == sum(t.numel() * 4 for t in next_states)
    half = state_spec(tiny_config.vae, batch, height, width, torch.float16)
    assert tensor_bytes(half) * 2 == tensor_bytes(specs)


def test_step_spec_names_inputs_and_outputs_in_state_order(vae, tiny_config):
    spec = step_spec(tiny_config.vae)
    names = DecoderStep(vae.decoder).state_names
    assert spec.input_names == ("latents", "first", *(STATE_INPUT + n for n in names))
    assert spec.output_names == ("video", *(STATE_OUTPUT + n for n in names))
    first = spec.inputs[1]
    assert first.dtype == torch.bool and first.dims == (1,)
    # every state follows the batch and a scaled latent size, never a fixed one
    for tensor in spec.inputs[2:]:
        assert tensor.dims[0] == "batch" and isinstance(tensor.dims[3], str)


def test_bad_chunk_and_state_count_raise(vae):
    z = latents(1, 2, 2, 2)
    with pytest.raises(ValueError, match="chunk=0 must be a positive"):
        vae.decode(z, chunk=0)
    with pytest.raises(ValueError, match="got 1 state tensors"):
        DecoderStep(vae.decoder)(z, torch.tensor([True]), z)
    with pytest.raises(ValueError, match="must be \\(batch, 16, lframes"):
        vae.decode(torch.zeros(1, 8, 2, 4, 4), chunk=1)


@torch.no_grad()
def test_states_by_name_are_the_states_by_position(vae):
    """Runners pass a graph's inputs by name (`state.<conv>`), the exporter by position."""
    z = latents(1, 2, 3, 4)
    step = DecoderStep(vae.decoder)
    generator = torch.Generator().manual_seed(1)
    states = tuple(torch.randn(s.shape, generator=generator) for s in step.initial_states(z))
    first = torch.tensor([False])
    by_position = step(z, first, *states)
    names = [STATE_INPUT + n for n in step.state_names]
    by_name = step(latents=z, first=first, **dict(zip(names, states, strict=True)))
    assert all(torch.equal(a, b) for a, b in zip(by_position, by_name, strict=True))
    with pytest.raises(ValueError, match="by position or all by name"):
        step(z, first, states[0], **dict(zip(names[1:], states[1:], strict=True)))
    with pytest.raises(ValueError, match=r"missing \['state.conv_in'\]"):
        step(z, first, **dict(zip(names[1:], states[1:], strict=True)))


def test_an_fp16_step_carries_fp16_states_behind_float32_latents_and_video(tiny_config):
    """The states are the graph's own activations handed back to it: they cross in its
    compute dtype (half the bytes of float32); latents and video are every stage's
    float32 I/O."""
    spec = step_spec(tiny_config.vae, torch.float16)
    assert (spec.inputs[0].dtype, spec.outputs[0].dtype) == (torch.float32, torch.float32)
    assert {t.dtype for t in (*spec.inputs[2:], *spec.outputs[1:])} == {torch.float16}
    assert spec.input_names == step_spec(tiny_config.vae).input_names


def test_only_convs_after_a_temporal_upsample_take_their_next_state_from_the_input(vae):
    """Their input has >= 2 frames in every call, so the next state is the input's last
    two frames (no cat of history and input kept for it); before the upsamples a
    one-frame chunk keeps part of the history (the exactness tests above, chunk=1)."""
    step = DecoderStep(vae.decoder)
    long = set(step._long)
    assert long and long < set(step.state_names)
    assert not any(name.startswith(("conv_in", "mid.", "levels.0.")) for name in long)
    assert all(name.startswith(("levels.1.", "levels.2.", "levels.3.", "head."))
               for name in long)
