"""The DiT's single attention entry point, with swappable backends and a Q/K prologue.

Every attention call in the DiT goes through `attention(q, k, v, backend, prologue)`, so the
Triton kernels in `cinema_trt.kernels` replace it by registering a backend, without the
model code knowing about them. The optional `QKPrologue` (RMS-norm, then RoPE on Q and K)
is applied inside the kernel by a backend registered with `fuses_prologue=True`, and here in
torch (`apply_prologue`) for every other backend: one definition of the math for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .rope import apply_rope

# (q, k, v) -> out, all (B, H, S, D); non-causal full attention. A backend registered with
# fuses_prologue=True is called as fn(q, k, v, prologue=QKPrologue | None).
AttentionFn = Callable[..., torch.Tensor]


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class QKPrologue:
    """Transforms applied to Q and K before Q.Kᵀ: RMS-norm (optional), then RoPE (optional).

    Norm weights are (D,) or per token (S, D) — the MM-DiT's text and visual streams have
    separate norms, so the caller concatenates the two weights along S. RoPE uses the
    "rotate half" layout of `models.rope`: cos/sin are (S, D) or per sample (B, S, D), and
    tokens without a position (text) carry cos=1, sin=0.
    """

    q_norm_weight: torch.Tensor | None = None
    k_norm_weight: torch.Tensor | None = None
    rope_cos: torch.Tensor | None = None
    rope_sin: torch.Tensor | None = None
    eps: float = 1e-6


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim; weight (D,) or per token (S, D) for x (..., S, D)."""
    # in fp32: fp16 squares of activations overflow
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x32.to(x.dtype) * weight


def apply_prologue(q: torch.Tensor, k: torch.Tensor,
                   prologue: QKPrologue) -> tuple[torch.Tensor, torch.Tensor]:
    """The prologue in torch, for backends that cannot fuse it. q, k: (B, H, S, D)."""
    q_weight, k_weight = prologue.q_norm_weight, prologue.k_norm_weight
    if q_weight is not None and k_weight is not None:
        q = rms_norm(q, q_weight, prologue.eps)
        k = rms_norm(k, k_weight, prologue.eps)
    cos, sin = prologue.rope_cos, prologue.rope_sin
    if cos is not None and sin is not None:
        if cos.dim() == 3:  # per sample (B, S, D): broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k


@dataclass(frozen=True)
class Backend:
    fn: AttentionFn
    fuses_prologue: bool = False  # fn takes prologue= and applies it inside its kernel


_BACKENDS: dict[str, Backend] = {}
# backends provided by other subpackages, imported on first use so the core stays light
_LAZY_BACKENDS = {name: "cinema_trt.kernels.backends"
                  for name in ("triton", "triton_unfused", "triton_int8")}


def register_backend(name: str, fn: AttentionFn, fuses_prologue: bool = False) -> None:
    _BACKENDS[name] = Backend(fn, fuses_prologue)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


register_backend("sdpa", sdpa)


def available_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_LAZY_BACKENDS))


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS and name in _LAZY_BACKENDS:
        import importlib

        importlib.import_module(_LAZY_BACKENDS[name])  # registers itself on import
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; "
                         f"choose one of {available_backends()}") from None


def fuses_prologue(backend: str) -> bool:
    """Whether `backend` applies a `QKPrologue` inside its kernel."""
    return get_backend(backend).fuses_prologue


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa",
              prologue: QKPrologue | None = None) -> torch.Tensor:
    """Full (non-causal) attention. q, k, v: (B, H, S, D) -> (B, H, S, D).

    prologue: RMS-norm and/or RoPE for q and k, fused by backends that can, else applied
    here first.
    """
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention expects (B, H, S, D) tensors with matching B, H, D; "
                         f"got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    chosen = get_backend(backend)
    if chosen.fuses_prologue:
        return chosen.fn(q, k, v, prologue=prologue)
    if prologue is not None:
        q, k = apply_prologue(q, k, prologue)
    return chosen.fn(q, k, v)
