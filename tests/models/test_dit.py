"""The CINEMA MM-DiT denoiser: shapes, input validation, input dependence, RoPE, backends.

All tests use the tiny preset in fp32 on CPU. "Changes the output" means a max abs
difference above 1e-4: fp32 round-off in this model is ~1e-6 (outputs are O(1)), while a
real dependence through the random weights moves outputs by ~1e-2 or more.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cinema_trt.models.attention import (
    QKPrologue,
    apply_prologue,
    attention,
    fuses_prologue,
    register_backend,
    sdpa,
)
from cinema_trt.models.dit import CinemaDiT, RMSNorm, create_dit
from cinema_trt.models.rope import apply_rope, grid_positions, rope_3d

CHANGED = 1e-4  # see module docstring


@pytest.fixture(scope="module")
def dit_config(tiny_config):
    return tiny_config.dit


@pytest.fixture(scope="module")
def model(dit_config) -> CinemaDiT:
    return create_dit(dit_config, seed=0)


def make_inputs(cfg, batch=1, frames=2, h=8, w=6, refs=2, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(batch, cfg.in_channels, frames, h, w, generator=gen),
        "timestep": torch.rand(batch, generator=gen) * 1000,
        "text_states": torch.randn(batch, cfg.text_len, cfg.text_dim, generator=gen),
        "ref_latents": torch.randn(batch, refs, cfg.in_channels, h, w, generator=gen),
    }


@torch.no_grad()
def run(model, inputs) -> torch.Tensor:
    return model(**inputs)


@pytest.mark.parametrize("frames", [1, 2, 3])
@pytest.mark.parametrize("refs", [1, 2, 4])
def test_velocity_has_the_latents_shape(model, dit_config, frames, refs):
    inputs = make_inputs(dit_config, batch=2, frames=frames, refs=refs)
    out = run(model, inputs)
    assert out.shape == inputs["latents"].shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_temporal_patch_size_two(dit_config):
    cfg = dataclasses.replace(dit_config, patch_size=(2, 2, 2))
    inputs = make_inputs(cfg, frames=4, refs=3)
    assert run(create_dit(cfg), inputs).shape == inputs["latents"].shape


@pytest.mark.parametrize("change, message", [
    (dict(refs=5), "between 1 and 4"),
    (dict(h=7), "divisible by the patch"),
    (dict(w=5), "divisible by the patch"),
])
def test_invalid_shapes_raise(model, dit_config, change, message):
    with pytest.raises(ValueError, match=message):
        run(model, make_inputs(dit_config, **change))


def test_zero_references_raise(model, dit_config):
    inputs = make_inputs(dit_config)
    inputs["ref_latents"] = inputs["ref_latents"][:, :0]
    with pytest.raises(ValueError, match="between 1 and 4"):
        run(model, inputs)


@pytest.mark.parametrize("name, bad_shape, message", [
    ("text_states", (1, 15, 48), "text_len=16"),
    ("text_states", (1, 16, 32), "text_dim=48"),
    ("timestep", (2,), "timestep must be"),
    ("ref_latents", (2, 2, 16, 8, 6), "ref_latents must be"),
    ("ref_latents", (1, 2, 16, 4, 6), "ref_latents must be"),
    ("latents", (1, 8, 2, 8, 6), "latents must be"),
])
def test_mismatched_inputs_raise(model, dit_config, name, bad_shape, message):
    inputs = make_inputs(dit_config)
    inputs[name] = torch.randn(bad_shape)
    with pytest.raises(ValueError, match=message):
        run(model, inputs)


def max_change(model, inputs, name, new_value) -> float:
    return (run(model, inputs) - run(model, {**inputs, name: new_value})).abs().max().item()


@pytest.mark.parametrize("k", [0, 1, 2])
def test_each_reference_changes_the_output(model, dit_config, k):
    inputs = make_inputs(dit_config, refs=3)
    refs = inputs["ref_latents"].clone()
    refs[:, k] = torch.randn(refs[:, k].shape, generator=torch.Generator().manual_seed(9))
    assert max_change(model, inputs, "ref_latents", refs) > CHANGED


def test_text_changes_the_output(model, dit_config):
    inputs = make_inputs(dit_config)
    new_text = make_inputs(dit_config, seed=1)["text_states"]
    assert max_change(model, inputs, "text_states", new_text) > CHANGED


def test_timestep_changes_the_output(model, dit_config):
    inputs = make_inputs(dit_config)
    assert max_change(model, inputs, "timestep", inputs["timestep"] + 50) > CHANGED


def test_latents_change_the_output(model, dit_config):
    inputs = make_inputs(dit_config)
    new_latents = make_inputs(dit_config, seed=1)["latents"]
    assert max_change(model, inputs, "latents", new_latents) > CHANGED


def test_reference_order_matters(model, dit_config):
    # references sit at distinct RoPE positions, so swapping two is not a no-op
    inputs = make_inputs(dit_config, refs=3)
    permuted = inputs["ref_latents"][:, [2, 0, 1]]
    assert max_change(model, inputs, "ref_latents", permuted) > CHANGED


def test_batch_equals_samples_alone(model, dit_config):
    # samples never mix; 1e-5 allows fp32 reduction-order differences between batch sizes
    inputs = make_inputs(dit_config, batch=2, refs=2)
    batched = run(model, inputs)
    for i in range(2):
        alone = run(model, {name: t[i:i + 1] for name, t in inputs.items()})
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=0)


def test_create_dit_is_deterministic(dit_config):
    a, b = create_dit(dit_config, seed=3), create_dit(dit_config, seed=3)
    c = create_dit(dit_config, seed=4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.proj_out.weight, c.proj_out.weight)


def test_patchify_round_trips(model, dit_config):
    x = make_inputs(dit_config, frames=3)["latents"]
    tokens = model.patchify(x)
    assert tokens.shape == (1, 3 * 4 * 3, dit_config.in_channels * 4)
    assert torch.equal(model.unpatchify(tokens, 3, 8, 6), x)


# --- RoPE ---------------------------------------------------------------------------------

DIMS = (4, 6, 6)


def rotated_dots(q, k, q_pos, k_pos):
    """Per-token q.k after rotating q at q_pos and k at k_pos. q, k: (S, D)."""
    cos_q, sin_q = rope_3d(q_pos, DIMS)
    cos_k, sin_k = rope_3d(k_pos, DIMS)
    return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum(-1)


def test_rope_depends_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 50, sum(DIMS), generator=gen)
    q_pos = torch.randint(0, 20, (50, 3), generator=gen)
    k_pos = torch.randint(0, 20, (50, 3), generator=gen)
    offset = torch.tensor([3, 5, 7])
    base = rotated_dots(q, k, q_pos, k_pos)
    # angles stay below ~30 rad, so fp32 cos/sin error (~1e-6) keeps dots within 1e-5
    torch.testing.assert_close(rotated_dots(q, k, q_pos + offset, k_pos + offset), base,
                               atol=1e-5, rtol=0)
    # the check can fail: moving q alone changes the dot products
    assert (rotated_dots(q, k, q_pos + offset, k_pos) - base).abs().max() > 1e-2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rope_uses_every_axis(axis):
    q = torch.randn(1, sum(DIMS), generator=torch.Generator().manual_seed(1))
    moved = torch.zeros(1, 3, dtype=torch.long)
    moved[0, axis] = 1
    origin = torch.zeros(1, 3, dtype=torch.long)
    still = rotated_dots(q, q, origin, origin)
    assert (rotated_dots(q, q, moved, origin) - still).abs().item() > 1e-3


def test_rope_is_a_rotation():
    x = torch.randn(2, 3, 40, sum(DIMS), generator=torch.Generator().manual_seed(2))
    cos, sin = rope_3d(grid_positions(2, 4, 5), DIMS)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_rope_rejects_bad_dims():
    with pytest.raises(ValueError, match="even"):
        rope_3d(torch.zeros(4, 3), (3, 6, 7))


def test_grid_positions_are_t_major_with_offset():
    pos = grid_positions(2, 2, 3, frame_offset=5)
    assert pos.shape == (12, 3)
    assert pos[0].tolist() == [5, 0, 0] and pos[1].tolist() == [5, 0, 1]
    assert pos[3].tolist() == [5, 1, 0] and pos[6].tolist() == [6, 0, 0]


# --- attention backend -------------------------------------------------------------------


class CountingSDPA:
    """A real attention backend: torch SDPA, plus a count of its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, v):
        self.calls += 1
        return sdpa(q, k, v)


def test_attention_backend_is_honoured(dit_config):
    backend = CountingSDPA()
    register_backend("test_counting_sdpa", backend)
    counted = create_dit(dataclasses.replace(dit_config, attention_backend="test_counting_sdpa"))
    inputs = make_inputs(dit_config)
    out = run(counted, inputs)
    assert backend.calls == dit_config.depth  # one joint attention per block
    # same seed and same math as the default "sdpa" backend
    torch.testing.assert_close(out, run(create_dit(dit_config), inputs), atol=0, rtol=0)


def test_unknown_backend_raises(dit_config):
    model = create_dit(dataclasses.replace(dit_config, attention_backend="no_such_backend"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        run(model, make_inputs(dit_config))


class RecordingSDPA:
    """A real backend: torch SDPA on the q, k it receives, which it keeps for inspection."""

    def __init__(self):
        self.received = []

    def __call__(self, q, k, v):
        self.received.append((q, k))
        return sdpa(q, k, v)


def test_a_backend_that_cannot_fuse_gets_the_prologue_applied_first():
    gen = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(3, 2, 2, 7, 16, generator=gen)  # (B, H, S, D) each
    norm_q, norm_k = RMSNorm(16), RMSNorm(16)
    with torch.no_grad():
        norm_q.weight.normal_(generator=gen)
        norm_k.weight.normal_(generator=gen)
    cos, sin = rope_3d(grid_positions(1, 1, 7), DIMS)
    backend = RecordingSDPA()
    register_backend("test_recording_sdpa", backend)
    prologue = QKPrologue(norm_q.weight, norm_k.weight, cos, sin)
    with torch.no_grad():
        out = attention(q, k, v, "test_recording_sdpa", prologue=prologue)
        # the DiT's own modules define the semantics: its RMSNorm, then apply_rope
        expected_q = apply_rope(norm_q(q), cos, sin)
        expected_k = apply_rope(norm_k(k), cos, sin)
    assert not fuses_prologue("test_recording_sdpa")
    (got_q, got_k), = backend.received
    assert torch.equal(got_q, expected_q) and torch.equal(got_k, expected_k)
    assert torch.equal(out, sdpa(expected_q, expected_k, v))


def test_per_sample_rope_tables_rotate_each_sample_by_its_own():
    gen = torch.Generator().manual_seed(6)
    q, k = torch.randn(2, 2, 3, 5, 16, generator=gen)  # (B, H, S, D) each
    tables = [rope_3d(grid_positions(1, 1, 5, frame_offset=b), DIMS) for b in range(2)]
    cos, sin = (torch.stack(t) for t in zip(*tables, strict=True))  # (B, S, D) each
    got_q, got_k = apply_prologue(q, k, QKPrologue(rope_cos=cos, rope_sin=sin))
    for b, (cos_b, sin_b) in enumerate(tables):
        assert torch.equal(got_q[b], apply_rope(q[b], cos_b, sin_b))
        assert torch.equal(got_k[b], apply_rope(k[b], cos_b, sin_b))


class RecordingFusedSDPA:
    """A real fusing backend: receives the prologue, applies it in torch, runs SDPA."""

    def __init__(self):
        self.prologues = []

    def __call__(self, q, k, v, prologue=None):
        self.prologues.append(prologue)
        return sdpa(*apply_prologue(q, k, prologue), v)


def test_dit_hands_the_prologue_to_a_fusing_backend(dit_config):
    backend = RecordingFusedSDPA()
    register_backend("test_fused_sdpa", backend, fuses_prologue=True)
    model = create_dit(dit_config)
    with torch.no_grad():  # per-stream norms apart: the init sets every weight to 1
        for i, module in enumerate(m for m in model.modules() if isinstance(m, RMSNorm)):
            module.weight.mul_(1.0 + 0.1 * i)
    inputs = make_inputs(dit_config, refs=2)
    out = run(model.with_attention_backend("test_fused_sdpa"), inputs)
    assert len(backend.prologues) == dit_config.depth
    tokens = dit_config.text_len + (2 + 2) * 4 * 3  # text + (refs + frames) * h' * w'
    for p in backend.prologues:
        assert p.q_norm_weight.shape == p.rope_cos.shape == (tokens, dit_config.head_dim)
    # the unfused path's elementwise math on the joint sequence: identical bits, since a
    # per-token weight row is the stream's weight and text rows give x*1 + r*0 == x
    torch.testing.assert_close(out, run(model, inputs), atol=0, rtol=0)


def test_attention_backend_twin_shares_the_weights(model, dit_config):
    twin = model.with_attention_backend("triton_unfused")
    assert twin.cfg.attention_backend == "triton_unfused"
    assert model.cfg.attention_backend == dit_config.attention_backend  # original untouched
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert a.data_ptr() == b.data_ptr(), name  # no copy: the same storage
    assert all(b.backend == "triton_unfused" for b in twin.blocks)
