"""The DiT gives the same velocity whichever attention backend it is built with.

Tolerances: `triton` computes the same fp32 softmax(QK^T)V with another summation order
(and, fused into the kernel, the same fp32 RMS-norm and RoPE), so it agrees with SDPA to
fp32 rounding (atol 1e-5 on O(1) outputs). `triton_int8` quantizes Q and K to int8 and P to
fp8/fp16, so it is held to its own budget: cosine similarity >= 0.999 to the SDPA output.

The model's q/k norm weights are set apart per stream and per block: the init sets them all
to 1, under which a fused prologue that gave a token the other stream's weight (or none)
would still match.
"""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cinema_trt.models.dit import RMSNorm, create_dit
from cinema_trt.models.presets import get_preset


def dit_inputs(cfg, refs=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(latents=torch.randn(2, 16, 2, 4, 6, generator=g),
                timestep=torch.tensor([900.0, 900.0]),
                text_states=torch.randn(2, cfg.text_len, cfg.text_dim, generator=g),
                ref_latents=torch.randn(2, refs, 16, 4, 6, generator=g))


def dit_with_distinct_norms(backend):
    model = create_dit(dataclasses.replace(get_preset("tiny").dit, attention_backend=backend))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.copy_(1.0 + 0.5 * torch.randn(module.weight.shape, generator=g))
    return model


def velocity(backend, inputs):
    with torch.no_grad():
        return dit_with_distinct_norms(backend)(**inputs)


@pytest.mark.parametrize("backend", ["triton", "triton_unfused"])
@pytest.mark.parametrize("refs", [1, 3])
def test_triton_backends_match_sdpa(backend, refs):
    inputs = dit_inputs(get_preset("tiny").dit, refs)
    reference, triton = velocity("sdpa", inputs), velocity(backend, inputs)
    assert reference.abs().max() > 0.1  # the comparison is not between near-zero tensors
    torch.testing.assert_close(triton, reference, atol=1e-5, rtol=1e-4)


def test_int8_backend_stays_inside_its_budget():
    inputs = dit_inputs(get_preset("tiny").dit, refs=2)
    reference, quantized = velocity("sdpa", inputs), velocity("triton_int8", inputs)
    cosine = torch.nn.functional.cosine_similarity(quantized.flatten(), reference.flatten(), dim=0)
    assert cosine >= 0.999


class AttentionOpCalls(TorchDispatchMode):
    """Records the arguments of every `torch.ops.cinema.attention` call, then runs it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.cinema.attention.default:
            self.calls.append(args)
        return func(*args, **(kwargs or {}))


def test_triton_dit_hands_norms_and_rope_to_the_kernel():
    cfg = get_preset("tiny").dit
    model, inputs = dit_with_distinct_norms("triton"), dit_inputs(cfg, refs=2)
    with torch.no_grad(), AttentionOpCalls() as recorded:
        model(**inputs)
    assert len(recorded.calls) == cfg.depth  # one joint attention per block
    text_len = cfg.text_len
    cos, sin = model.visual_rope(2, 2, 3, 2, torch.device("cpu"))  # (N, D): 2 refs + 2 frames
    for block, (q, _, _, _, q_w, k_w, rope_cos, rope_sin, _, _) in zip(model.blocks,
                                                                       recorded.calls, strict=True):
        assert q.shape[2] == text_len + cos.shape[0]
        # each token is normalised with its own stream's weight
        for table, text, visual in ((q_w, block.text.q_norm, block.visual.q_norm),
                                    (k_w, block.text.k_norm, block.visual.k_norm)):
            assert torch.equal(table[:text_len], text.weight.expand(text_len, -1))
            assert torch.equal(table[text_len:], visual.weight.expand(cos.shape[0], -1))
        # text rows are the identity rotation; visual rows are the model's 3D RoPE
        assert torch.equal(rope_cos[:text_len], torch.ones(text_len, cfg.head_dim))
        assert torch.equal(rope_sin[:text_len], torch.zeros(text_len, cfg.head_dim))
        assert torch.equal(rope_cos[text_len:], cos) and torch.equal(rope_sin[text_len:], sin)


def test_unfused_triton_dit_gives_the_kernel_no_prologue():
    cfg = get_preset("tiny").dit
    with torch.no_grad(), AttentionOpCalls() as recorded:
        dit_with_distinct_norms("triton_unfused")(**dit_inputs(cfg, refs=1))
    assert len(recorded.calls) == cfg.depth
    assert all(all(a is None for a in args[4:8]) for args in recorded.calls)
