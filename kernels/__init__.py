"""cinema_trt.kernels: Triton attention kernels, their custom ops and the TensorRT plugin.

Importing this package registers the attention backends "triton" (fused fp16/bf16/fp32
flash attention that also fuses the DiT's Q/K norm + RoPE prologue), "triton_unfused" (the
same kernel, prologue applied in torch: what the TensorRT plugin runs) and "triton_int8"
(SageAttention-style INT8/FP8) with `cinema_trt.models.attention`, and the custom ops
`torch.ops.cinema.attention` and `torch.ops.cinema.attention_int8`. It imports neither
Triton nor TensorRT: kernels compile on first use, and `trt_plugin` is a separate, lazily
imported module.
"""

from __future__ import annotations

import torch

from cinema_trt.models.attention import register_backend

from .ops import Int8Quantization, attention, attention_int8
from .reference import QKPrologue, attention_reference


def _triton_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    prologue: QKPrologue | None = None) -> torch.Tensor:
    return attention(q, k, v, prologue=prologue)


def _triton_unfused_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention(q, k, v)


def _triton_int8_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention_int8(q, k, v)


register_backend("triton", _triton_backend, fuses_prologue=True)
# the same kernel with any Q/K prologue applied in torch first: what the TensorRT plugin
# (which has no prologue) runs, so plugin graphs are exported from DiTs with this backend
register_backend("triton_unfused", _triton_unfused_backend)
# INT8 cannot fuse: K's smoothing mean must be taken after norm and RoPE
register_backend("triton_int8", _triton_int8_backend)

__all__ = ["Int8Quantization", "QKPrologue", "attention", "attention_int8",
           "attention_reference"]
