"""The fused Triton attention kernel against a float64 PyTorch reference.

CPU tier: the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), tiny shapes,
one block config (32x32); bf16 through `exact_bf16_interpreter_dot` (tests/kernels/conftest.py:
the 3.9 interpreter's own bf16 dot multiplies bit patterns). Both load paths run here:
pointer loads, and the TMA path (device-side tensor descriptors) that Hopper uses.
GPU tier (`gpu`): larger shapes on the compiled, autotuned kernel.

Tolerance, derived rather than guessed (flash-attention's rule): the kernel's max error vs
the fp64 reference must be at most 2x the error of the naive PyTorch computation in the
same dtype, plus one unit of output rounding (eps(dtype) * max|out|), which even an exact
computation pays when it stores its result in `dtype`.
"""

from __future__ import annotations

import os

import pytest
import torch

from cinema_trt.kernels.fused_attention import launch_attention, tma_compatible, tma_supported
from cinema_trt.kernels.ops import attention
from cinema_trt.kernels.reference import (
    QKPrologue,
    attention_reference,
    rms_norm_reference,
    rope_reference,
)
from cinema_trt.models.rope import apply_rope, grid_positions, rope_3d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def _qkv(batch, heads, n_q, n_kv, head_dim, dtype, seed=0):
    return (_randn(batch, heads, n_q, head_dim, dtype=dtype, seed=seed),
            _randn(batch, heads, n_kv, head_dim, dtype=dtype, seed=seed + 1),
            _randn(batch, heads, n_kv, head_dim, dtype=dtype, seed=seed + 2))


def assert_matches_reference(out, q, k, v, **kwargs):
    ref = attention_reference(q, k, v, **kwargs)
    torch_err = (attention_reference(q, k, v, compute_dtype=q.dtype, **kwargs).double()
                 - ref).abs().max().item()
    floor = torch.finfo(q.dtype).eps * ref.abs().max().item()
    err = (out.double() - ref).abs().max().item()
    assert out.shape == q.shape and out.dtype == q.dtype
    assert err <= 2 * torch_err + floor, (
        f"kernel error {err:.3g} > 2 x same-dtype torch error {torch_err:.3g} + {floor:.3g}")


@pytest.mark.usefixtures("exact_bf16_interpreter_dot")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("seq", [1, 17, 97])
def test_matches_reference_at_odd_lengths(seq, head_dim, dtype):
    q, k, v = _qkv(2, 2, seq, seq, head_dim, dtype)
    assert_matches_reference(attention(q, k, v), q, k, v)


def test_head_dim_128():
    q, k, v = _qkv(1, 2, 33, 33, 128, torch.float16)
    assert_matches_reference(attention(q, k, v), q, k, v)


def test_cross_attention_with_different_query_and_key_lengths():
    q, k, v = _qkv(2, 2, 17, 97, 32, torch.float32)
    assert_matches_reference(attention(q, k, v), q, k, v)


def test_custom_scale():
    q, k, v = _qkv(1, 2, 17, 17, 16, torch.float32)
    assert_matches_reference(attention(q, k, v, scale=0.5), q, k, v, scale=0.5)


def test_strided_inputs_and_output_layout():
    # q, k, v as the DiT produces them: views into one (B, S, 3, H, D) projection
    qkv = _randn(2, 41, 3, 2, 32)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = attention(q, k, v)
    assert_matches_reference(out, q, k, v)
    assert out.stride() == torch.empty_like(q).stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_per_sample_valid_lengths_mask_keys(dtype):
    q, k, v = _qkv(3, 2, 97, 97, 32, dtype)
    kv_lens = torch.tensor([1, 40, 97])
    out = attention(q, k, v, kv_lens=kv_lens)
    assert_matches_reference(out, q, k, v, kv_lens=kv_lens)
    # padding is never read: garbage past each length leaves the output bit-identical
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(kv_lens.tolist()):
        k2[b, :, n:] = 1e4
        v2[b, :, n:] = -1e4
    assert torch.equal(attention(q, k2, v2, kv_lens=kv_lens), out)


def test_zero_valid_keys_give_zeros():
    q, k, v = _qkv(2, 1, 17, 17, 16, torch.float32)
    out = attention(q, k, v, kv_lens=torch.tensor([0, 17]))
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_matches_reference(out[1:], q[1:], k[1:], v[1:])


def _dit_like_prologue(batch, seq, head_dim, dtype, kind, per_sample=False):
    """1 text token (no position: cos=1, sin=0) + a 2x3x(seq-1)/6 video grid, like the DiT."""
    n_video = seq - 1
    cos, sin = rope_3d(grid_positions(2, 3, n_video // 6), (head_dim // 4, head_dim // 8 * 3,
                                                            head_dim // 8 * 3))
    cos = torch.cat([torch.ones(1, head_dim), cos]).to(DEVICE)
    sin = torch.cat([torch.zeros(1, head_dim), sin]).to(DEVICE)
    if per_sample:  # e.g. samples with different numbers of reference images
        cos = torch.stack([cos.roll(i, dims=0) for i in range(batch)])
        sin = torch.stack([sin.roll(i, dims=0) for i in range(batch)])
    # text and visual streams have separate norm weights: a per-token (S, D) table for q
    q_w = torch.cat([_randn(1, head_dim, seed=7),
                     _randn(1, head_dim, seed=8).expand(n_video, -1)]).to(dtype) * 0.3 + 1
    k_w = (_randn(head_dim, seed=9) * 0.3 + 1).to(dtype)
    if kind == "norm":
        return QKPrologue(q_norm_weight=q_w, k_norm_weight=k_w)
    if kind == "rope":
        return QKPrologue(rope_cos=cos, rope_sin=sin)
    return QKPrologue(q_w, k_w, cos, sin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["norm", "rope", "norm+rope"])
def test_fused_prologue(kind, dtype):
    q, k, v = _qkv(2, 2, 37, 37, 32, dtype)
    prologue = _dit_like_prologue(2, 37, 32, dtype, kind)
    kv_lens = torch.tensor([37, 20])
    out = attention(q, k, v, kv_lens=kv_lens, prologue=prologue)
    assert_matches_reference(out, q, k, v, kv_lens=kv_lens, prologue=prologue)
    # the prologue must matter, or the comparison above proves nothing about it
    plain = attention_reference(q, k, v, kv_lens=kv_lens)
    assert (out.double() - plain).abs().max() > 1e-2


def test_fused_rope_with_per_sample_tables():
    q, k, v = _qkv(3, 2, 37, 37, 32, torch.float32)
    prologue = _dit_like_prologue(3, 37, 32, torch.float32, "norm+rope", per_sample=True)
    assert_matches_reference(attention(q, k, v, prologue=prologue), q, k, v, prologue=prologue)


def test_prologue_reference_matches_the_dit_modules():
    from cinema_trt.models.dit import RMSNorm

    x = _randn(2, 2, 13, 32)
    norm = RMSNorm(32).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(_randn(32, seed=3))
    cos, sin = rope_3d(grid_positions(1, 1, 13), (8, 12, 12))
    cos, sin = cos.to(DEVICE), sin.to(DEVICE)
    # fp32 both sides: differences are rounding only (~1e-7 relative)
    with torch.no_grad():
        torch.testing.assert_close(rms_norm_reference(x, norm.weight, norm.eps), norm(x),
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rope_reference(x, cos, sin), apply_rope(x, cos, sin),
                               rtol=1e-5, atol=1e-6)


def _launch(q, k, v, use_tma, kv_lens=None, prologue=None):
    """The kernel with its load path chosen explicitly (`attention` picks it by device)."""
    out = torch.empty_like(q)
    lens = None if kv_lens is None else kv_lens.to(device=DEVICE, dtype=torch.int32)
    launch_attention(q, k, v, out, lens, prologue or QKPrologue(), q.shape[3] ** -0.5,
                     use_tma=use_tma)
    return out


LOAD_PATHS = [pytest.param(False, id="pointers"), pytest.param(True, id="tma")]


@pytest.mark.usefixtures("exact_bf16_interpreter_dot")
@pytest.mark.parametrize("use_tma", LOAD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_both_load_paths_with_valid_lengths(head_dim, dtype, use_tma):
    # 97 keys: three full 32-key tiles and a 1-key tail; lengths end mid-tile and at 1
    q, k, v = _qkv(3, 2, 97, 97, head_dim, dtype)
    kv_lens = torch.tensor([97, 40, 1])
    assert_matches_reference(_launch(q, k, v, use_tma, kv_lens), q, k, v, kv_lens=kv_lens)


@pytest.mark.usefixtures("exact_bf16_interpreter_dot")
@pytest.mark.parametrize("use_tma", LOAD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_both_load_paths_with_fused_prologue(dtype, use_tma):
    q, k, v = _qkv(2, 2, 97, 97, 64, dtype)
    prologue = _dit_like_prologue(2, 97, 64, dtype, "norm+rope")
    kv_lens = torch.tensor([97, 50])
    out = _launch(q, k, v, use_tma, kv_lens, prologue)
    assert_matches_reference(out, q, k, v, kv_lens=kv_lens, prologue=prologue)


def test_tma_path_reads_the_same_values_as_pointer_loads():
    # the descriptor bounds (not masks) hide padding: with garbage past each length and
    # 17 queries against 97 keys, the two paths must agree bit for bit
    q = _randn(2, 2, 17, 32)
    _, k, v = _qkv(2, 2, 17, 97, 32, torch.float32)
    kv_lens = torch.tensor([0, 63])
    k[1, :, 63:], v[1, :, 63:] = 1e4, -1e4
    tma = _launch(q, k, v, True, kv_lens)
    assert torch.equal(tma, _launch(q, k, v, False, kv_lens))
    assert torch.equal(tma[0], torch.zeros_like(tma[0]))  # an empty sample gives zeros
    assert_matches_reference(tma[1:], q[1:], k[1:], v[1:], kv_lens=kv_lens[1:])


def test_tma_is_chosen_only_for_aligned_tensors_on_hopper():
    q, k, v = _qkv(1, 2, 17, 17, 32, torch.float16)
    assert tma_compatible(q, k, v)
    assert not tma_supported(torch.device("cpu"))  # the CPU interpreter: pointer loads
    # dropping the first channel of D=33 leaves a 2-byte offset and 66-byte rows
    unaligned = _randn(1, 2, 17, 33, dtype=torch.float16)[..., 1:]
    assert not tma_compatible(unaligned)
    with pytest.raises(ValueError, match="16-byte"):
        _launch(unaligned, unaligned, unaligned, True)


def test_interpreter_bf16_dot_is_still_broken():
    """Minimal reproduction of the Triton 3.9 interpreter bug the bf16 fixture works around;
    when this fails, Triton fixed it: drop `exact_bf16_interpreter_dot`."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("an interpreter bug")
    import triton
    import triton.language as tl

    @triton.jit
    def dot16(A, B, C):
        r = tl.arange(0, 16)
        tile = r[:, None] * 16 + r[None, :]
        tl.store(C + tile, tl.dot(tl.load(A + tile), tl.load(B + tile)))

    a, b = _randn(16, 16, dtype=torch.bfloat16), _randn(16, 16, dtype=torch.bfloat16, seed=1)
    c = torch.empty(16, 16)
    dot16[(1,)](a, b, c)
    # exact products, fp32 sums: a working dot is within 1e-5; the broken one is off by ~1e10
    assert (c - a.float() @ b.float()).abs().max() > 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"q": (1, 2, 8, 24), "k": (1, 2, 8, 24)}, "power of two"),
    ({"q": (1, 2, 8, 16), "k": (1, 3, 8, 16)}, "matching B, H, D"),
    ({"q": (1, 2, 8, 16), "k": (1, 2, 8, 16), "kv_lens": torch.tensor([1, 2])}, "kv_lens"),
    ({"q": (1, 2, 8, 16), "k": (1, 2, 9, 16), "prologue": "rope"}, "same positions"),
    ({"q": (1, 2, 8, 16), "k": (1, 2, 8, 16), "prologue": "one-norm"}, "both q_norm_weight"),
])
def test_invalid_inputs_are_rejected(kwargs, message):
    q, k = _randn(*kwargs["q"]), _randn(*kwargs["k"])
    prologue = {None: None,
                "rope": QKPrologue(rope_cos=torch.ones(8, 16), rope_sin=torch.zeros(8, 16)),
                "one-norm": QKPrologue(q_norm_weight=torch.ones(16))}[kwargs.get("prologue")]
    with pytest.raises(ValueError, match=message):
        attention(q, k, k, kv_lens=kwargs.get("kv_lens"), prologue=prologue)


def test_mixed_dtypes_are_rejected():
    q, k, v = _qkv(1, 1, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="share one dtype"):
        attention(q, k.half(), v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_autotuned_kernel_at_dit_like_lengths(dtype, head_dim):
    # 1,000+ tokens: several BLOCK_M/BLOCK_N tiles and a ragged tail for every config
    q, k, v = _qkv(2, 4, 1123, 1123, head_dim, dtype)
    kv_lens = torch.tensor([1123, 700])
    prologue = _dit_like_prologue(2, 1123, head_dim, dtype, "norm+rope")
    assert_matches_reference(attention(q, k, v), q, k, v)
    assert_matches_reference(attention(q, k, v, kv_lens=kv_lens, prologue=prologue), q, k, v,
                             kv_lens=kv_lens, prologue=prologue)


@pytest.mark.gpu
@pytest.mark.parametrize("use_tma", LOAD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_both_load_paths_at_dit_like_lengths(dtype, use_tma):
    # the compiled bf16 dot, which the CPU tier can only emulate, on both load paths
    if use_tma and not tma_supported(torch.device(DEVICE)):
        pytest.skip("TMA needs compute capability >= 9.0 (Hopper)")
    q, k, v = _qkv(2, 4, 1123, 1123, 128, dtype)
    kv_lens = torch.tensor([1123, 700])
    prologue = _dit_like_prologue(2, 1123, 128, dtype, "norm+rope")
    out = _launch(q, k, v, use_tma, kv_lens, prologue)
    assert_matches_reference(out, q, k, v, kv_lens=kv_lens, prologue=prologue)


@pytest.mark.gpu
def test_gpu_error_at_most_twice_that_of_sdpa():
    # the production baseline: PyTorch's fused SDPA in fp16 on the same inputs
    q, k, v = _qkv(2, 8, 2000, 2000, 64, torch.float16)
    ref = attention_reference(q, k, v)
    sdpa_err = (torch.nn.functional.scaled_dot_product_attention(q, k, v).double()
                - ref).abs().max().item()
    floor = torch.finfo(q.dtype).eps * ref.abs().max().item()
    assert (attention(q, k, v).double() - ref).abs().max().item() <= 2 * sdpa_err + floor
