"""The Triton attention backends, registered with `cinema_trt.models.attention`.

`models.attention.get_backend("triton" | "triton_unfused" | "triton_int8")` imports this
module on first use; importing it registers the three backends. It imports neither Triton
nor TensorRT: kernels compile on first use.
"""

from __future__ import annotations

import torch

from cinema_trt.models.attention import register_backend

from .ops import attention, attention_int8
from .reference import QKPrologue


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
