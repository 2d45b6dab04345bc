"""Pure-PyTorch reference for the attention kernels, kept beside them in library code.

Tests compare the Triton kernels against `attention_reference` in float64, and against the
same function run in the input dtype to derive tolerances. `QKPrologue` describes the
optional Q/K transforms (RMS-norm, then 3D RoPE) that the fused kernel applies while
loading Q and K; the DiT's own `RMSNorm` and `apply_rope` (models/) define the semantics.
The reference computes the norm in its `compute_dtype` (float64 for the error baseline),
unlike `models.attention.rms_norm`, which works in fp32 whatever the input.
"""

from __future__ import annotations

import math

import torch

# the prologue's description lives with the attention entry point (models/attention.py),
# which applies it in torch for backends that cannot fuse it
from cinema_trt.models.attention import QKPrologue

LOG2E = 1.4426950408889634  # exp(x) == exp2(x * log2(e)); the kernels fold it into the scale


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-norm over the last dim. x (B, H, S, D); weight (D,) or (S, D)."""
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x * weight.to(x.dtype)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. x (B, H, S, D); cos/sin (S, D) or (B, S, D)."""
    if cos.dim() == 3:  # per sample: broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def apply_prologue_reference(q: torch.Tensor, k: torch.Tensor,
                             prologue: QKPrologue | None) -> tuple[torch.Tensor, torch.Tensor]:
    if prologue is None:
        return q, k
    q_weight, k_weight = prologue.q_norm_weight, prologue.k_norm_weight
    if q_weight is not None and k_weight is not None:
        q = rms_norm_reference(q, q_weight, prologue.eps)
        k = rms_norm_reference(k, k_weight, prologue.eps)
    cos, sin = prologue.rope_cos, prologue.rope_sin
    if cos is not None and sin is not None:
        q, k = rope_reference(q, cos, sin), rope_reference(k, cos, sin)
    return q, k


def key_mask(kv_lens: torch.Tensor, kv_len: int) -> torch.Tensor:
    """(B,) valid lengths -> (B, 1, 1, S_kv) boolean mask, True for keys that are attended."""
    return (torch.arange(kv_len, device=kv_lens.device)[None, :] < kv_lens[:, None])[:, None, None]


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_lens: torch.Tensor | None = None, prologue: QKPrologue | None = None,
                        scale: float | None = None,
                        compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """softmax(Q Kᵀ * scale) V computed naively in `compute_dtype`, returned in it.

    q (B, H, S_q, D), k/v (B, H, S_kv, D); keys at index >= kv_lens[b] are masked.
    With compute_dtype equal to the input dtype this is "the same-dtype PyTorch computation"
    whose error sets the kernels' tolerance.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    q, k = apply_prologue_reference(q, k, prologue)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, S_q, S_kv)
    if kv_lens is not None:
        scores = scores.masked_fill(~key_mask(kv_lens.to(scores.device), k.shape[2]),
                                    float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
