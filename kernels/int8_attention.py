"""SageAttention-style quantized attention: INT8 Q.Kᵀ, FP8 P.V, fp32 accumulation.

Three steps (SageAttention, Zhang et al. 2024/2025):
1. K smoothing: subtract the per-head mean of K over the valid keys. Every query's scores
   shift by the same constant q.mean(K), which softmax ignores, while the per-channel bias
   that dominates real K (and would eat the int8 range) disappears.
2. Per-block INT8 quantization: one fp32 scale per `q_block` rows of Q and per `k_block`
   rows of K (symmetric, round-half-away). The softmax scale and log2(e) are folded into
   Q's scale, so int32 scores times two scales are already exp2 arguments.
3. P.V in FP8 e4m3 with per-channel V scales and fp32 accumulation on GPUs that have FP8
   MMA (sm_89+). Elsewhere — older GPUs and the CPU interpreter, which has no FP8 dot —
   P.V falls back to fp16/bf16 while Q/K stay real int8.

Scales are looked up per row (`rows // q_block`), so the attention kernel's BLOCK_M/BLOCK_N
are autotuned freely, independent of the quantization granularity.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cinema_trt.models.backends import supports
from cinema_trt.models.precision import Precision

from ._common import program_coords
from .reference import LOG2E, key_mask
from .tuning import interpreting, prune_triton_configs, triton_configs

FP8_MAX = 448.0  # largest finite float8 e4m3fn value


@triton.jit
def _quant_int8(X, MEAN, LENS, Y, SCALE, stride_xb, stride_xh, stride_xm, stride_xd,
                H, N_CTX, n_blocks, multiplier,
                HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, HAS_MEAN: tl.constexpr,
                HAS_LENS: tl.constexpr):
    """Y[b, h, rows] = round((X - mean) * multiplier / scale), one scale per BLOCK rows.

    Rows at or past LENS[b] (padding) are stored as 0 and do not widen the block's range.
    """
    blk, off_b, off_h, n_valid = program_coords(H, LENS, N_CTX, HAS_LENS)
    off_bh = off_b * H + off_h
    rows = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (rows < n_valid)[:, None]
    x = tl.load(X + off_b * stride_xb + off_h * stride_xh + rows[:, None] * stride_xm
                + offs_d[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    if HAS_MEAN:
        x = tl.where(mask, x - tl.load(MEAN + off_bh * HEAD_DIM + offs_d)[None, :],
                     0.0)
    x = x * multiplier
    scale = tl.max(tl.max(tl.abs(x), axis=1), axis=0) / 127.0
    scale = tl.where(scale == 0.0, 1.0, scale)  # an all-zero block: any scale is exact
    y = x / scale
    y = y + tl.where(y >= 0, 0.5, -0.5)  # round half away from zero; the cast truncates
    y_ptr = Y + off_bh * N_CTX * HEAD_DIM
    tl.store(y_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], y.to(tl.int8),
             mask=(rows < N_CTX)[:, None])
    tl.store(SCALE + off_bh * n_blocks + blk, scale)


def _prune(configs, named_args, **kwargs):
    """Per-shape filter: 1-byte Q/K tiles; V is 1 byte on the FP8 path."""
    v_bytes = 1 if kwargs["PV_FP8"] else named_args["V"].element_size()
    return prune_triton_configs(configs, kwargs["HEAD_DIM"], 1, 1, v_bytes)


@triton.autotune(configs=triton_configs(),
                 key=["N_CTX_Q", "N_CTX_KV", "HEAD_DIM", "PV_FP8"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_fwd_int8(Q8, K8, V, Q_SCALE, K_SCALE, V_SCALE, KV_LENS,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   H, N_CTX_Q, N_CTX_KV, n_q_blocks, n_k_blocks,
                   Out,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   Q_BLOCK: tl.constexpr, K_BLOCK: tl.constexpr,
                   HAS_KV_LENS: tl.constexpr, PV_FP8: tl.constexpr):
    start_m, off_b, off_h, kv_len = program_coords(H, KV_LENS, N_CTX_KV, HAS_KV_LENS)
    off_bh = off_b * H + off_h
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < N_CTX_Q

    # 1. int8 Q tile and its per-row scale (softmax scale and log2(e) already folded in)
    q8_ptr = Q8 + off_bh * N_CTX_Q * HEAD_DIM
    q = tl.load(q8_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0)
    q_scale = tl.load(Q_SCALE + off_bh * n_q_blocks + rows // Q_BLOCK, mask=row_ok, other=0.0)
    k8_ptr = K8 + off_bh * N_CTX_KV * HEAD_DIM
    v_ptr = V + off_b * stride_vb + off_h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, kv_len, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < kv_len
        k = tl.load(k8_ptr + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None],
                    other=0)
        k_scale = tl.load(K_SCALE + off_bh * n_k_blocks + cols // K_BLOCK, mask=col_ok, other=0.0)
        # 2. exact int32 scores, dequantised by the two per-block scales
        qk = tl.dot(q, tl.trans(k)).to(tl.float32) * q_scale[:, None] * k_scale[None, :]
        qk = tl.where(col_ok[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=col_ok[:, None], other=0.0)
        # 3. P in [0, 1] is stretched to e4m3's range; V arrives divided by its channel scale
        if PV_FP8:
            p_lo = (p * 448.0).to(tl.float8e4nv)
        else:
            p_lo = p.to(v.dtype)
        acc = tl.dot(p_lo, v, acc * alpha[:, None])
        m_i = m_ij

    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    if PV_FP8:
        v_scale = tl.load(V_SCALE + off_bh * HEAD_DIM + offs_d)
        out = out * (v_scale / 448.0)[None, :]
    o_ptr = Out + off_b * stride_ob + off_h * stride_oh
    tl.store(o_ptr + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])


def key_mean(k: torch.Tensor, kv_lens: torch.Tensor | None) -> torch.Tensor:
    """Per-(batch, head) mean of K over valid keys, (B, H, D) fp32, without an fp32 copy of K."""
    if kv_lens is None:
        return k.mean(dim=2, dtype=torch.float32)
    # a masked mean as one GEMV; weights of 1/len (not 1) keep fp16 sums from overflowing.
    # Any vector subtracted from all keys is exact for softmax, so rounding here is harmless.
    weights = key_mask(kv_lens, k.shape[2]) / kv_lens.clamp(min=1)[:, None, None, None]
    return (weights.to(k.dtype) @ k).float()[:, :, 0]  # (B, H, D)


def quantize_per_block(x: torch.Tensor, block: int, multiplier: float = 1.0,
                       mean: torch.Tensor | None = None, lens: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, S, D) -> int8 (B, H, S, D) contiguous and fp32 scales (B, H, ceil(S / block)).

    x ≈ int8 * scale[block] / multiplier + mean for rows < lens[b]; later rows become 0.
    """
    batch, heads, seq, head_dim = x.shape
    n_blocks = triton.cdiv(seq, block)
    y = torch.empty((batch, heads, seq, head_dim), dtype=torch.int8, device=x.device)
    scale = torch.empty((batch, heads, n_blocks), dtype=torch.float32, device=x.device)
    mean = mean.contiguous() if mean is not None else None
    _quant_int8[(n_blocks, batch * heads)](x, mean, lens, y, scale, *x.stride(), heads, seq,
                                           n_blocks, multiplier, HEAD_DIM=head_dim, BLOCK=block,
                                           HAS_MEAN=mean is not None, HAS_LENS=lens is not None)
    return y, scale


def fp8_supported(device: torch.device) -> bool:
    """FP8 e4m3 MMA exists from Ada on (the precision policy's FP8 minimum); never in the
    interpreter."""
    if interpreting() or device.type != "cuda":
        return False
    return supports(torch.cuda.get_device_capability(device), Precision.FP8)


def _quantize_v_fp8(v: torch.Tensor, kv_lens: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel FP8 V, stored sequence-major per channel (the K-major B operand FP8 MMA
    wants), and its (B, H, D) fp32 scales taken over valid keys only."""
    magnitude = v.abs()
    if kv_lens is not None:
        magnitude = magnitude.masked_fill(~key_mask(kv_lens, v.shape[2]).transpose(-1, -2), 0)
    # divide in v's dtype (no fp32 copy of V); the floor keeps all-zero channels finite
    scale = (magnitude.amax(dim=2) / FP8_MAX).clamp(min=torch.finfo(v.dtype).tiny)  # (B, H, D)
    v8 = (v / scale[:, :, None, :]).to(torch.float8_e4m3fn)
    return v8.transpose(2, 3).contiguous().transpose(2, 3), scale.float()


def launch_attention_int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          kv_lens: torch.Tensor | None, scale: float, q_block: int,
                          k_block: int, smooth_k: bool) -> None:
    """Write quantized attention(q, k, v) into `out`; inputs validated by ops.py."""
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    q8, q_scale = quantize_per_block(q, q_block, multiplier=scale * LOG2E)
    k8, k_scale = quantize_per_block(k, k_block, mean=key_mean(k, kv_lens) if smooth_k else None,
                                     lens=kv_lens)
    pv_fp8 = fp8_supported(q.device)
    v_in, v_scale = _quantize_v_fp8(v, kv_lens) if pv_fp8 else (v, None)

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

    _attn_fwd_int8[grid](q8, k8, v_in, q_scale, k_scale, v_scale, kv_lens,
                         *v_in.stride(), *out.stride(), heads, n_q, n_kv,
                         q_scale.shape[2], k_scale.shape[2], out,
                         HEAD_DIM=head_dim, Q_BLOCK=q_block, K_BLOCK=k_block,
                         HAS_KV_LENS=kv_lens is not None, PV_FP8=pv_fp8)
