"""SageAttention-style INT8 attention: quantization pieces, then the kernel's accuracy.

Accuracy is measured as cosine similarity to the float64 reference, the metric the
SageAttention papers report; 0.999 is their bar for end-to-end-safe attention. In the
interpreter (CPU tier) P.V runs in the input dtype (fp32/fp16/bf16) while Q.Kᵀ is real int8;
the FP8 P.V path is checked in the GPU tier.
"""

from __future__ import annotations

import pytest
import torch

from cinema_trt.kernels.int8_attention import fp8_supported, key_mean, quantize_per_block
from cinema_trt.kernels.ops import Int8Quantization, attention_int8
from cinema_trt.kernels.reference import attention_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
COSINE_BAR = 0.999


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def _qkv(batch, heads, seq, head_dim, dtype, seed=0):
    return tuple(_randn(batch, heads, seq, head_dim, dtype=dtype, seed=seed + i) for i in range(3))


def _cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    cosine = torch.nn.functional.cosine_similarity(out.double().flatten(), ref.flatten(), dim=0)
    return cosine.item()


def test_quantize_per_block_is_int8_within_half_a_step():
    x = _randn(2, 3, 37, 32)
    mean = _randn(2, 3, 32, seed=1)
    q8, scale = quantize_per_block(x, block=16, multiplier=0.25, mean=mean)
    assert q8.dtype == torch.int8 and scale.shape == (2, 3, 3)  # ceil(37 / 16) blocks
    per_row_scale = scale.repeat_interleave(16, dim=2)[:, :, :37, None]
    restored = q8.float() * per_row_scale
    # symmetric round-to-nearest: |error| <= scale / 2 per element (+ fp32 rounding)
    err = (restored - (x - mean[:, :, None]) * 0.25).abs()
    assert (err <= per_row_scale / 2 * (1 + 1e-5)).all()
    assert q8.abs().amax() == 127  # each block's largest element uses the full range


def test_key_mean_counts_valid_keys_only():
    k = _randn(2, 2, 10, 32)
    lens = torch.tensor([4, 10], device=DEVICE)
    mean = key_mean(k, lens)
    torch.testing.assert_close(mean[0], k[0, :, :4].mean(dim=1))  # fp32: rounding only
    torch.testing.assert_close(mean[1], k[1].mean(dim=1))


@pytest.mark.usefixtures("exact_bf16_interpreter_dot")  # bf16 P.V in the interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seq, head_dim", [(1, 32), (17, 32), (97, 64)])
def test_random_inputs_reach_the_cosine_bar(seq, head_dim, dtype):
    q, k, v = _qkv(2, 2, seq, head_dim, dtype)
    out = attention_int8(q, k, v, quant=Int8Quantization(q_block=32, k_block=16))
    assert out.shape == q.shape and out.dtype == dtype
    assert _cosine(out, attention_reference(q, k, v)) >= COSINE_BAR


def test_outlier_keys_need_smoothing():
    # real DiT keys carry a large per-channel bias shared by all tokens; per-block int8 then
    # spends its range on the bias and rounds away the token-to-token differences
    q, k, v = _qkv(2, 2, 97, 64, torch.float16)
    k = k + 20 * _randn(1, 1, 1, 64, dtype=torch.float16, seed=5)
    ref = attention_reference(q, k, v)
    smooth = _cosine(attention_int8(q, k, v, quant=Int8Quantization(32, 16, True)), ref)
    raw = _cosine(attention_int8(q, k, v, quant=Int8Quantization(32, 16, False)), ref)
    assert raw < COSINE_BAR <= smooth


def test_valid_lengths_mask_keys_and_ignore_padding_content():
    q, k, v = _qkv(3, 2, 50, 32, torch.float16)
    kv_lens = torch.tensor([1, 23, 50])
    quant = Int8Quantization(32, 16)
    out = attention_int8(q, k, v, kv_lens=kv_lens, quant=quant)
    assert _cosine(out, attention_reference(q, k, v, kv_lens=kv_lens)) >= COSINE_BAR
    # padding enters neither the K mean, nor a block's scale, nor the loop: bit-identical
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(kv_lens.tolist()):
        k2[b, :, n:] = 1e4
        v2[b, :, n:] = -1e4
    assert torch.equal(attention_int8(q, k2, v2, kv_lens=kv_lens, quant=quant), out)


def test_head_dim_16_is_zero_padded_exactly():
    # tiny test models have 16-wide heads; int8 tl.dot needs 32, so the op pads with zeros
    q, k, v = _qkv(2, 2, 17, 16, torch.float32)
    wide = [torch.nn.functional.pad(t, (0, 16)) for t in (q, k, v)]
    quant = Int8Quantization(32, 16)
    out = attention_int8(q, k, v, quant=quant)
    padded = attention_int8(*wide, scale=16 ** -0.5, quant=quant)
    assert torch.equal(out, padded[..., :16]) and out.is_contiguous()


def test_bad_quantization_blocks_are_rejected():
    with pytest.raises(ValueError, match="q_block=48"):
        Int8Quantization(q_block=48)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_fp8_pv_reaches_the_cosine_bar(dtype, head_dim):
    assert fp8_supported(torch.device("cuda")) == (torch.cuda.get_device_capability() >= (8, 9))
    q, k, v = _qkv(2, 4, 2049, head_dim, dtype)
    k = k + 8 * _randn(1, 1, 1, head_dim, dtype=dtype, seed=5)
    kv_lens = torch.tensor([2049, 1500])
    out = attention_int8(q, k, v, kv_lens=kv_lens)
    assert _cosine(out, attention_reference(q, k, v, kv_lens=kv_lens)) >= COSINE_BAR
