"""Fused attention forward in Triton: non-causal, per-sample key lengths, fused Q/K prologue.

Modelled on Triton's 06-fused-attention tutorial: one program owns BLOCK_M query rows of
one (batch, head); Q stays on-chip while the program streams K/V in BLOCK_N tiles with an
online softmax in fp32 (exp2, log2(e) folded into the scale). Keys at index >= kv_lens[b]
are never loaded: the loop stops at the sample's length, so padding costs nothing.

The optional prologue (RMS-norm, then rotate-half RoPE) runs on each Q/K tile as it is
loaded, so the DiT never writes normalised or rotated copies of Q and K to memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import LOG2E, QKPrologue
from .tuning import prune_triton_configs, triton_configs


def _prune(configs, named_args, **kwargs):
    """Per-shape filter (early_config_prune): shared-memory fit for this head dim and dtype."""
    size = named_args["K"].element_size()
    return prune_triton_configs(configs, kwargs["HEAD_DIM"], size, size, size)


@triton.jit
def _load_qk_tile(X, stride_xm, stride_xd, rows, n_rows, W, stride_wm, COS, SIN, stride_cm,
                  eps, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr):
    """Load a (rows, HEAD_DIM) tile of Q or K and apply the prologue in fp32.

    X points at this (batch, head), COS/SIN at this sample's tables, W at the norm-weight
    table (row stride 0 when shared by all tokens). Rows >= n_rows read as zeros.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (rows < n_rows)[:, None]
    x = tl.load(X + rows[:, None] * stride_xm + offs_d[None, :] * stride_xd, mask=mask, other=0.0)
    if HAS_NORM or HAS_ROPE:
        out_dtype = x.dtype
        x = x.to(tl.float32)
        # rotate-half pairs dimension d with (d + D/2) mod D; the partner is loaded directly
        # instead of shuffling registers, and is normalised with its own weight
        offs_p = (offs_d + HEAD_DIM // 2) % HEAD_DIM
        if HAS_ROPE:
            xp = tl.load(X + rows[:, None] * stride_xm + offs_p[None, :] * stride_xd,
                         mask=mask, other=0.0).to(tl.float32)
        if HAS_NORM:
            rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
            w = tl.load(W + rows[:, None] * stride_wm + offs_d[None, :], mask=mask, other=0.0)
            x = x * rstd[:, None] * w.to(tl.float32)
            if HAS_ROPE:
                wp = tl.load(W + rows[:, None] * stride_wm + offs_p[None, :], mask=mask, other=0.0)
                xp = xp * rstd[:, None] * wp.to(tl.float32)
        if HAS_ROPE:
            cos = tl.load(COS + rows[:, None] * stride_cm + offs_d[None, :], mask=mask, other=1.0)
            sin = tl.load(SIN + rows[:, None] * stride_cm + offs_d[None, :], mask=mask, other=0.0)
            sign = tl.where(offs_d < HEAD_DIM // 2, -1.0, 1.0)
            x = x * cos + sign[None, :] * xp * sin
        x = x.to(out_dtype)
    return x


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_kd, stride_vn, stride_vd,
                    KW, stride_kwm, COS, SIN, stride_cm, eps, qk_scale, lo, hi, kv_len,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                    HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr):
    """Keys [lo, hi) in BLOCK_N steps. MASKED only for the last, partial tile."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_qk_tile(K, stride_kn, stride_kd, cols, kv_len, KW, stride_kwm, COS, SIN,
                          stride_cm, eps, HEAD_DIM, HAS_NORM, HAS_ROPE)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        if MASKED:
            qk = tl.where((cols < kv_len)[None, :], qk, float("-inf"))
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=(cols < kv_len)[:, None], other=0.0)
        else:
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd)
        # every tile holds at least one valid key (lo < kv_len), so m_ij is finite
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.autotune(configs=triton_configs(),
                 key=["N_CTX_Q", "N_CTX_KV", "HEAD_DIM", "HAS_NORM", "HAS_ROPE"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_fwd(Q, K, V, KV_LENS, Q_NORM_W, K_NORM_W, COS, SIN,  # inputs (TensorRT order)
              stride_qb, stride_qh, stride_qm, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_om, stride_od,
              stride_qwm, stride_kwm, stride_cb, stride_cm,
              H, N_CTX_Q, N_CTX_KV,
              Out,  # output after the integer arguments, as a TensorRT AOT plugin passes them
              qk_scale, eps,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HAS_KV_LENS: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
              INPUT_PRECISION: tl.constexpr):
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    kv_len = N_CTX_KV
    if HAS_KV_LENS:
        kv_len = tl.minimum(tl.load(KV_LENS + off_b), N_CTX_KV)
    q_ptr = Q + off_b * stride_qb + off_h * stride_qh
    k_ptr = K + off_b * stride_kb + off_h * stride_kh
    v_ptr = V + off_b * stride_vb + off_h * stride_vh
    cos_ptr = COS
    sin_ptr = SIN
    if HAS_ROPE:
        cos_ptr = COS + off_b * stride_cb
        sin_ptr = SIN + off_b * stride_cb
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)

    # 1. Q tile, normalised and rotated once; it stays in registers for the whole key loop
    q = _load_qk_tile(q_ptr, stride_qm, stride_qd, rows, N_CTX_Q, Q_NORM_W, stride_qwm,
                      cos_ptr, sin_ptr, stride_cm, eps, HEAD_DIM, HAS_NORM, HAS_ROPE)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # 2. full key tiles without masks, then the ragged tail (0 or 1 iteration) with masks
    n_full = (kv_len // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptr, v_ptr, stride_kn, stride_kd,
                                    stride_vn, stride_vd, K_NORM_W, stride_kwm, cos_ptr,
                                    sin_ptr, stride_cm, eps, qk_scale, 0, n_full, kv_len,
                                    HEAD_DIM, BLOCK_N, False, HAS_NORM, HAS_ROPE,
                                    INPUT_PRECISION)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptr, v_ptr, stride_kn, stride_kd,
                                    stride_vn, stride_vd, K_NORM_W, stride_kwm, cos_ptr,
                                    sin_ptr, stride_cm, eps, qk_scale, n_full, kv_len, kv_len,
                                    HEAD_DIM, BLOCK_N, True, HAS_NORM, HAS_ROPE,
                                    INPUT_PRECISION)

    # 3. normalise and store; kv_len == 0 leaves l_i == 0: write zeros rather than NaN
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    offs_d = tl.arange(0, HEAD_DIM)
    o_ptr = Out + off_b * stride_ob + off_h * stride_oh
    tl.store(o_ptr + rows[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=(rows < N_CTX_Q)[:, None])


def _norm_table(weight: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    """(D,) or (S, D) weight -> a tensor with unit last stride and its row stride (0: shared)."""
    if weight is None:
        return None, 0
    weight = weight.contiguous()
    return weight, (0 if weight.dim() == 1 else weight.stride(0))


def _rope_tables(prologue: QKPrologue) -> tuple[torch.Tensor | None, torch.Tensor | None, int, int]:
    """cos/sin as contiguous fp32 (Bc, S, D), plus (batch stride, row stride)."""
    if not prologue.has_rope:
        return None, None, 0, 0
    cos, sin = (t.float().contiguous() for t in (prologue.rope_cos, prologue.rope_sin))
    if cos.dim() == 2:
        return cos, sin, 0, cos.stride(0)
    return cos, sin, (0 if cos.shape[0] == 1 else cos.stride(0)), cos.stride(1)


def launch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     kv_lens: torch.Tensor | None, prologue: QKPrologue, scale: float) -> None:
    """Write attention(q, k, v) into `out`. All (B, H, S, D), already validated by ops.py."""
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    qw, stride_qwm = _norm_table(prologue.q_norm_weight)
    kw, stride_kwm = _norm_table(prologue.k_norm_weight)
    cos, sin, stride_cb, stride_cm = _rope_tables(prologue)
    # fp32 inputs: full-precision dot (TF32 would lose 10 mantissa bits); 16-bit: native MMA
    precision = "ieee" if q.dtype == torch.float32 else "tf32"

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

    _attn_fwd[grid](
        q, k, v, kv_lens, qw, kw, cos, sin,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        stride_qwm, stride_kwm, stride_cb, stride_cm,
        heads, n_q, n_kv, out, scale * LOG2E, prologue.eps,
        HEAD_DIM=head_dim, HAS_KV_LENS=kv_lens is not None, HAS_NORM=prologue.has_norm,
        HAS_ROPE=prologue.has_rope, INPUT_PRECISION=precision)
