"""AlignerNet: fixed-length text states from variable-length MLLM states, padding-blind."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cinema_trt.models.aligner import AlignerNet, create_aligner
from cinema_trt.models.presets import AlignerConfig

# Masked keys get exactly zero attention weight, so padding changes the result only through
# the summation order of longer reductions: ~1e-7 relative at these magnitudes (outputs are
# O(1)); 1e-5 leaves room for that and still catches any leak of padding (>= 1e-3 here).
PAD_ATOL = 1e-5


@pytest.fixture(scope="module")
def cfg(tiny_config) -> AlignerConfig:
    return tiny_config.aligner


@pytest.fixture(scope="module")
def aligner(cfg) -> AlignerNet:
    return create_aligner(cfg, seed=0)


def _inputs(cfg: AlignerConfig, batch: int, seq: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, cfg.in_dim, generator=gen)
    return hidden, torch.ones(batch, seq, dtype=torch.int64)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("seq", [5, 17])
def test_output_is_num_queries_tokens_of_out_dim(aligner, cfg, batch, seq):
    hidden, mask = _inputs(cfg, batch, seq)
    out = aligner(hidden, mask)
    assert out.shape == (batch, cfg.num_queries, cfg.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_query_count_follows_the_config(cfg):
    cfg7 = dataclasses.replace(cfg, num_queries=7)
    model = create_aligner(cfg7)
    assert model.queries.shape == (7, cfg.width)
    hidden, mask = _inputs(cfg, 1, 5)
    assert model(hidden, mask).shape == (1, 7, cfg.out_dim)


def test_appended_padding_does_not_change_the_output(aligner, cfg):
    hidden, mask = _inputs(cfg, 2, 5)
    reference = aligner(hidden, mask)
    # padding full of garbage, including NaN and huge values another runtime might leave
    garbage = torch.randn(2, 7, cfg.in_dim) * 1e4
    garbage[0, 3] = float("nan")
    padded = aligner(torch.cat([hidden, garbage], dim=1),
                     torch.cat([mask, torch.zeros(2, 7, dtype=torch.int64)], dim=1))
    torch.testing.assert_close(padded, reference, atol=PAD_ATOL, rtol=0)


def test_a_padded_sample_matches_the_same_sample_alone(aligner, cfg):
    hidden, mask = _inputs(cfg, 2, 9)
    mask[0, 4:] = 0  # sample 0 has 4 valid tokens, batched with a full sample
    batched = aligner(hidden, mask)
    alone = aligner(hidden[:1, :4], mask[:1, :4])
    torch.testing.assert_close(batched[:1], alone, atol=PAD_ATOL, rtol=0)


def test_every_valid_token_and_the_mask_matter(aligner, cfg):
    hidden, mask = _inputs(cfg, 1, 5)
    base = aligner(hidden, mask)
    for pos in range(5):
        changed = hidden.clone()
        # a random change: a constant shift would be removed by the input LayerNorm
        changed[0, pos] += torch.randn(cfg.in_dim)
        assert (aligner(changed, mask) - base).abs().max() > 1e-4, f"token {pos} ignored"
    masked = mask.clone()
    masked[0, 2] = 0
    assert (aligner(hidden, masked) - base).abs().max() > 1e-4
    # distinct queries give distinct output tokens
    assert torch.cdist(base[0], base[0]).triu(diagonal=1).max() > 1e-3


def test_all_padding_still_gives_finite_output(aligner, cfg):
    hidden, _ = _inputs(cfg, 2, 5)
    out = aligner(hidden, torch.zeros(2, 5, dtype=torch.int64))
    assert torch.isfinite(out).all()


def test_create_aligner_is_deterministic_and_leaves_global_rng_alone(cfg):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = create_aligner(cfg, seed=0), create_aligner(cfg, seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    c = create_aligner(cfg, seed=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.queries, c.queries)


def test_no_linear_layer_is_zero_initialised(aligner):
    linears = [m for m in aligner.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for layer in linears:
        assert layer.weight.std() > 1e-3


def test_bad_inputs_and_configs_are_rejected(aligner, cfg):
    with pytest.raises(ValueError, match="divisible by"):
        AlignerNet(dataclasses.replace(cfg, width=33))
    with pytest.raises(ValueError, match=str(cfg.in_dim)):
        aligner(torch.randn(1, 5, cfg.in_dim + 1), torch.ones(1, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        aligner(torch.randn(1, 5, cfg.in_dim), torch.ones(1, 4, dtype=torch.int64))


def test_exports_with_a_dynamic_sequence_length(aligner, cfg):
    # export-friendliness: no data-dependent control flow, so one graph serves every length
    hidden, mask = _inputs(cfg, 2, 5)
    seq = torch.export.Dim("seq", min=2, max=512)
    program = torch.export.export(aligner, (hidden, mask),
                                  dynamic_shapes=({1: seq}, {1: seq}))
    hidden, mask = _inputs(cfg, 2, 17, seed=1)
    mask[1, 10:] = 0
    torch.testing.assert_close(program.module()(hidden, mask), aligner(hidden, mask),
                               atol=1e-6, rtol=0)
