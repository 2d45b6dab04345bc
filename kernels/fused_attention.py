"""Fused attention forward in Triton: non-causal, per-sample key lengths, fused Q/K prologue.

Modelled on Triton's 06-fused-attention tutorial: one program owns BLOCK_M query rows of
one (batch, head); Q stays on-chip while the program streams K/V in BLOCK_N tiles with an
online softmax in fp32 (exp2, log2(e) folded into the scale). Keys at index >= kv_lens[b]
are never loaded: the loop stops at the sample's length, so padding costs nothing.

The optional prologue (RMS-norm, then rotate-half RoPE) runs on each Q/K tile as it is
loaded, so the DiT never writes normalised or rotated copies of Q and K to memory.

Two load paths, picked at compile time (USE_TMA): pointer loads with masks, and on Hopper
(sm_90+) device-side tensor descriptors, so Q/K/V tiles arrive by TMA and O leaves by TMA;
each descriptor is bounded to its (batch, head) slice and valid length, which replaces the
masks. No warp specialization: Triton 3.9 documents `tl.range(..., warp_specialize=True)`
as Blackwell-only ("only supported on Blackwell GPUs and only works on simple matmul
loops", triton/language/core.py, class range), and compiling this loop with it for sm_90
leaves the kernel unpartitioned (sm_100 partitions it).

Over 300 lines on purpose: like the tutorial, one file reads top to bottom (tile loads,
the inner loop, the kernel, then the host side: TMA checks, scratch allocator, launcher);
the two load paths share every helper, so splitting them would split each helper.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cinema_trt.models.backends import TMA_SM, sm_of

from ._common import program_coords
from .reference import LOG2E, QKPrologue
from .tuning import interpreting, prune_triton_configs, triton_configs


def _prune(configs, named_args, **kwargs):
    """Per-shape filter (early_config_prune): shared-memory fit for this head dim and dtype."""
    size = named_args["K"].element_size()
    return prune_triton_configs(configs, kwargs["HEAD_DIM"], size, size, size)


@triton.jit
def _tile_source(X, stride_xm, n_rows, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                 USE_TMA: tl.constexpr):
    """What the (n_rows, HEAD_DIM) slice at X is read from: a TMA descriptor, or X itself.

    The descriptor's bounds do the masking in hardware: rows >= n_rows load as zeros and
    are not stored. Its last stride is the literal 1 TMA requires (the host checked it).
    """
    # one return after a compile-time branch: the compiler requires a single return type
    if USE_TMA:
        src = tl.make_tensor_descriptor(X, shape=[n_rows, HEAD_DIM], strides=[stride_xm, 1],
                                        block_shape=[BLOCK, HEAD_DIM])
    else:
        src = X
    return src


@triton.jit
def _load_rows(SRC, stride_xm, stride_xd, start, n_rows, BLOCK: tl.constexpr,
               HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """Rows [start, start + BLOCK) of a `_tile_source`; rows >= n_rows read as zeros."""
    if USE_TMA:
        x = SRC.load([start, 0])
    else:
        rows = start + tl.arange(0, BLOCK)
        ptrs = SRC + rows[:, None] * stride_xm + tl.arange(0, HEAD_DIM)[None, :] * stride_xd
        if MASKED:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _load_qk_tile(X, SRC, stride_xm, stride_xd, start, n_rows, W, stride_wm, COS, SIN,
                  stride_cm, eps, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
                  HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr, USE_TMA: tl.constexpr):
    """Load rows [start, start + BLOCK) of Q or K and apply the prologue in fp32.

    X points at this (batch, head) and SRC is its `_tile_source`; COS/SIN point at this
    sample's tables, W at the norm-weight table (row stride 0 when shared by all tokens).
    Rows >= n_rows read as zeros.
    """
    x = _load_rows(SRC, stride_xm, stride_xd, start, n_rows, BLOCK, HEAD_DIM, True, USE_TMA)
    if HAS_NORM or HAS_ROPE:
        rows = start + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, HEAD_DIM)
        mask = (rows < n_rows)[:, None]
        out_dtype = x.dtype
        x = x.to(tl.float32)
        # rotate-half pairs dimension d with (d + D/2) mod D; the partner is loaded directly
        # (a pointer load on both paths: a TMA box cannot permute columns) instead of
        # shuffling registers, and is normalised with its own weight
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
def _attn_fwd_inner(acc, l_i, m_i, q, K, K_SRC, V_SRC, stride_kn, stride_kd, stride_vn,
                    stride_vd, KW, stride_kwm, COS, SIN, stride_cm, eps, qk_scale, lo, hi,
                    kv_len, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                    MASKED: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """Keys [lo, hi) in BLOCK_N steps. MASKED only for the last, partial tile."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k = _load_qk_tile(K, K_SRC, stride_kn, stride_kd, start_n, kv_len, KW, stride_kwm, COS,
                          SIN, stride_cm, eps, BLOCK_N, HEAD_DIM, HAS_NORM, HAS_ROPE, USE_TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        if MASKED:
            qk = tl.where((start_n + offs_n < kv_len)[None, :], qk, float("-inf"))
        v = _load_rows(V_SRC, stride_vn, stride_vd, start_n, kv_len, BLOCK_N, HEAD_DIM, MASKED,
                       USE_TMA)
        # every tile holds at least one valid key (lo < kv_len), so m_ij is finite
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.autotune(configs=triton_configs(),
                 key=["N_CTX_Q", "N_CTX_KV", "HEAD_DIM", "HAS_NORM", "HAS_ROPE", "USE_TMA"],
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
              INPUT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    start_m, off_b, off_h, kv_len = program_coords(H, KV_LENS, N_CTX_KV, HAS_KV_LENS)
    q_ptr = Q + off_b * stride_qb + off_h * stride_qh
    k_ptr = K + off_b * stride_kb + off_h * stride_kh
    v_ptr = V + off_b * stride_vb + off_h * stride_vh
    o_ptr = Out + off_b * stride_ob + off_h * stride_oh
    cos_ptr = COS
    sin_ptr = SIN
    if HAS_ROPE:
        cos_ptr = COS + off_b * stride_cb
        sin_ptr = SIN + off_b * stride_cb
    # a descriptor dimension must be positive; an empty sample never loads from K or V
    kv_rows = tl.maximum(kv_len, 1) if HAS_KV_LENS else N_CTX_KV
    q_src = _tile_source(q_ptr, stride_qm, N_CTX_Q, BLOCK_M, HEAD_DIM, USE_TMA)
    k_src = _tile_source(k_ptr, stride_kn, kv_rows, BLOCK_N, HEAD_DIM, USE_TMA)
    v_src = _tile_source(v_ptr, stride_vn, kv_rows, BLOCK_N, HEAD_DIM, USE_TMA)
    o_dst = _tile_source(o_ptr, stride_om, N_CTX_Q, BLOCK_M, HEAD_DIM, USE_TMA)

    # 1. Q tile, normalised and rotated once; it stays in registers for the whole key loop
    q = _load_qk_tile(q_ptr, q_src, stride_qm, stride_qd, start_m * BLOCK_M, N_CTX_Q, Q_NORM_W,
                      stride_qwm, cos_ptr, sin_ptr, stride_cm, eps, BLOCK_M, HEAD_DIM, HAS_NORM,
                      HAS_ROPE, USE_TMA)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # 2. full key tiles without masks, then the ragged tail (0 or 1 iteration) with masks
    n_full = (kv_len // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptr, k_src, v_src, stride_kn, stride_kd,
                                    stride_vn, stride_vd, K_NORM_W, stride_kwm, cos_ptr,
                                    sin_ptr, stride_cm, eps, qk_scale, 0, n_full, kv_len,
                                    HEAD_DIM, BLOCK_N, False, HAS_NORM, HAS_ROPE,
                                    INPUT_PRECISION, USE_TMA)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptr, k_src, v_src, stride_kn, stride_kd,
                                    stride_vn, stride_vd, K_NORM_W, stride_kwm, cos_ptr,
                                    sin_ptr, stride_cm, eps, qk_scale, n_full, kv_len, kv_len,
                                    HEAD_DIM, BLOCK_N, True, HAS_NORM, HAS_ROPE,
                                    INPUT_PRECISION, USE_TMA)

    # 3. normalise and store; kv_len == 0 leaves l_i == 0: write zeros rather than NaN
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = (acc / l_i[:, None]).to(Out.dtype.element_ty)
    if USE_TMA:
        o_dst.store([start_m * BLOCK_M, 0], out)
    else:
        rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(o_ptr + rows[:, None] * stride_om + tl.arange(0, HEAD_DIM)[None, :] * stride_od,
                 out, mask=(rows < N_CTX_Q)[:, None])


def _norm_table(weight: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
    """(D,) or (S, D) weight -> a tensor with unit last stride and its row stride (0: shared)."""
    if weight is None:
        return None, 0
    weight = weight.contiguous()
    return weight, (0 if weight.dim() == 1 else weight.stride(0))


def _rope_tables(prologue: QKPrologue) -> tuple[torch.Tensor | None, torch.Tensor | None, int, int]:
    """cos/sin as contiguous fp32 (Bc, S, D), plus (batch stride, row stride)."""
    if prologue.rope_cos is None or prologue.rope_sin is None:
        return None, None, 0, 0
    cos, sin = (t.float().contiguous() for t in (prologue.rope_cos, prologue.rope_sin))
    if cos.dim() == 2:
        return cos, sin, 0, cos.stride(0)
    return cos, sin, (0 if cos.shape[0] == 1 else cos.stride(0)), cos.stride(1)


# Off until a GPU has run it: the TMA path is checked in the interpreter and compiled for
# sm_90 (tests/kernels), but it has never executed on a GPU, so the default stays the
# pointer path. Flip it when benchmarks/attention.py shows "triton_tma" correct and faster.
TMA_BY_DEFAULT = False


def tma_supported(device: torch.device) -> bool:
    """TMA (tensor memory accelerator) loads exist on Hopper and later GPUs."""
    if interpreting() or device.type != "cuda":
        return False
    return sm_of(torch.cuda.get_device_capability(device)) >= TMA_SM


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """Whether each (batch, head) slice of these (B, H, S, D) tensors can be a TMA source.

    TMA needs a 16-byte aligned base and 16-byte multiple strides, with unit last stride.
    Batch/head strides matter only where that dimension has more than one entry.
    """
    for t in tensors:
        size = t.element_size()
        if t.stride(3) != 1 or t.data_ptr() % 16 or (t.stride(2) * size) % 16:
            return False
        outer = zip(t.shape[:2], t.stride()[:2], strict=True)
        if any((stride * size) % 16 for n, stride in outer if n > 1):
            return False
    return True


def _torch_scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Triton's global-scratch allocator: device-side TMA descriptors are written to a
    per-launch buffer. torch's caching allocator is stream-ordered and 512-byte aligned."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_scratch_allocator() -> None:
    """Install `_torch_scratch` unless the caller installed an allocator of their own.

    Triton keeps the allocator in a ContextVar (default: one that raises), so this runs
    before every TMA launch: a new thread starts without one.
    """
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_scratch)


def launch_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     kv_lens: torch.Tensor | None, prologue: QKPrologue, scale: float,
                     use_tma: bool | None = None) -> None:
    """Write attention(q, k, v) into `out`. All (B, H, S, D), already validated by ops.py.

    use_tma: load Q/K/V and store O through device-side tensor descriptors. None picks it
    when TMA_BY_DEFAULT, on Hopper+ GPUs, when every tensor meets TMA's alignment; True
    forces it (the tests run it in the interpreter, benchmarks/attention.py as
    "triton_tma") and raises if the alignment does not hold.
    """
    batch, heads, n_q, head_dim = q.shape
    n_kv = k.shape[2]
    aligned = tma_compatible(q, k, v, out)
    if use_tma is None:
        use_tma = TMA_BY_DEFAULT and aligned and tma_supported(q.device)
    elif use_tma and not aligned:
        raise ValueError("use_tma=True needs q, k, v and out with unit last stride and 16-byte "
                         "aligned data pointers and strides; pass contiguous tensors or "
                         "use_tma=None")
    if use_tma and not interpreting():
        _ensure_scratch_allocator()
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
        HEAD_DIM=head_dim, HAS_KV_LENS=kv_lens is not None, HAS_NORM=qw is not None,
        HAS_ROPE=cos is not None, INPUT_PRECISION=precision, USE_TMA=use_tma)
