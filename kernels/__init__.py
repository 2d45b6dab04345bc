"""cinema_trt.kernels: Triton attention kernels, their custom ops and the TensorRT plugin.

Importing this package registers the attention backends "triton" (fused fp16/bf16/fp32
flash attention) and "triton_int8" (SageAttention-style INT8/FP8) with
`cinema_trt.models.attention`, and the custom ops `torch.ops.cinema.attention` and
`torch.ops.cinema.attention_int8`. It imports neither Triton nor TensorRT: kernels compile
on first use, and `trt_plugin` is a separate, lazily imported module.
"""

import torch

from cinema_trt.models.attention import register_backend

from .ops import Int8Quantization, attention, attention_int8
from .reference import QKPrologue, attention_reference


def _triton_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention(q, k, v)


def _triton_int8_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention_int8(q, k, v)


register_backend("triton", _triton_backend)
register_backend("triton_int8", _triton_int8_backend)

__all__ = ["Int8Quantization", "QKPrologue", "attention", "attention_int8",
           "attention_reference"]
