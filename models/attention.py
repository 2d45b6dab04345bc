"""The DiT's single attention entry point, with swappable backends.

Every attention call in the DiT goes through `attention(q, k, v, backend=...)`, so the
Triton kernels in `cinema_trt.kernels` replace it by registering a backend, without the
model code knowing about them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# (q, k, v) -> out, all (B, H, S, D); non-causal full attention
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}
# backends provided by other subpackages, imported on first use so the core stays light
_LAZY_BACKENDS = {"triton": "cinema_trt.kernels", "triton_int8": "cinema_trt.kernels"}


def register_backend(name: str, fn: AttentionFn) -> None:
    _BACKENDS[name] = fn


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


register_backend("sdpa", sdpa)


def available_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(_LAZY_BACKENDS))


def get_backend(name: str) -> AttentionFn:
    if name not in _BACKENDS and name in _LAZY_BACKENDS:
        import importlib

        importlib.import_module(_LAZY_BACKENDS[name])  # registers itself on import
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; "
                         f"choose one of {available_backends()}") from None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              backend: str = "sdpa") -> torch.Tensor:
    """Full (non-causal) attention. q, k, v: (B, H, S, D) -> (B, H, S, D)."""
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention expects (B, H, S, D) tensors with matching B, H, D; "
                         f"got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    return get_backend(backend)(q, k, v)
