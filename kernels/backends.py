"""The Triton attention backends, registered with `cinema_trt.models.attention`.

`models.attention.get_backend("triton" | "triton_unfused" | "triton_int8")` imports this
module on first use; importing it registers the three backends. It imports neither Triton
nor TensorRT: kernels compile on first use.
"""

from __future__ import annotations

from cinema_trt.models.attention import register_backend

from .ops import attention, attention_int8

register_backend("triton", attention, fuses_prologue=True)
# the same kernel with any Q/K prologue applied in torch first: what the TensorRT plugin
# (which has no prologue) runs, so plugin graphs are exported from DiTs with this backend
register_backend("triton_unfused", attention)
# INT8 cannot fuse: K's smoothing mean must be taken after norm and RoPE
register_backend("triton_int8", attention_int8)
