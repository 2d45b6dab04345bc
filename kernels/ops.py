"""Public entry points and PyTorch custom ops for the Triton attention kernels.

`attention` and `attention_int8` validate inputs and call the custom ops
`torch.ops.cinema.attention` / `torch.ops.cinema.attention_int8`. The ops have fake
(meta) implementations, so `torch.export` records each call as one node instead of tracing
into Triton, and the ONNX exporter can map that node to the TensorRT plugin
(`plugin_onnx.onnx_translation_table`). Triton itself is imported only when a kernel runs.
"""

import math
from dataclasses import dataclass

import torch

from .reference import QKPrologue
from .tuning import interpreting

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256  # tl.dot needs K >= 16; 256 already fills shared memory
MIN_HEAD_DIM_INT8 = 32  # an int8 tl.dot needs K >= 32; smaller heads are zero-padded to it


@dataclass(frozen=True)
class Int8Quantization:
    """How `attention_int8` quantizes: scale granularity in rows, and K smoothing.

    Defaults match the kernel's Hopper tile (128 query rows, 64 key rows per scale), as in
    SageAttention; smaller blocks track local magnitude more closely at little cost.
    """

    q_block: int = 128
    k_block: int = 64
    smooth_k: bool = True

    def __post_init__(self):
        for name in ("q_block", "k_block"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name}={value} must be a power of two >= 16 "
                                 f"(it is a Triton block size)")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] \
            or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention expects q (B, H, S_q, D) and k, v (B, H, S_kv, D) with "
                         f"matching B, H, D; got q{tuple(q.shape)} k{tuple(k.shape)} "
                         f"v{tuple(v.shape)}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype from {list(DTYPES)}; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    head_dim = q.shape[3]
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim={head_dim} must be a power of two in [{MIN_HEAD_DIM}, "
                         f"{MAX_HEAD_DIM}] for the Triton kernels; use backend 'sdpa' otherwise")


def _check_kv_lens(kv_lens: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """(B,) integer valid key counts -> int32 on q's device (None: every key is valid)."""
    if kv_lens is None:
        return None
    if kv_lens.shape != (q.shape[0],) or kv_lens.is_floating_point():
        raise ValueError(f"kv_lens must be an integer tensor of shape ({q.shape[0]},) — one "
                         f"valid key count per sample; got {kv_lens.dtype} {tuple(kv_lens.shape)}")
    return kv_lens.to(device=q.device, dtype=torch.int32)


def _check_prologue(p: QKPrologue, n_q: int, n_kv: int, batch: int, head_dim: int) -> None:
    if (p.q_norm_weight is None) != (p.k_norm_weight is None):
        raise ValueError("QKPrologue needs both q_norm_weight and k_norm_weight, or neither")
    for name, weight, rows in (("q_norm_weight", p.q_norm_weight, n_q),
                               ("k_norm_weight", p.k_norm_weight, n_kv)):
        if weight is not None and weight.shape not in ((head_dim,), (rows, head_dim)):
            raise ValueError(f"{name} must be ({head_dim},) or ({rows}, {head_dim}); "
                             f"got {tuple(weight.shape)}")
    if (p.rope_cos is None) != (p.rope_sin is None):
        raise ValueError("QKPrologue needs both rope_cos and rope_sin, or neither")
    if p.rope_cos is not None and p.rope_sin is not None:
        if n_q != n_kv:
            raise ValueError(f"fused RoPE needs queries and keys at the same positions; got "
                             f"S_q={n_q}, S_kv={n_kv}")
        allowed = ((n_q, head_dim), (1, n_q, head_dim), (batch, n_q, head_dim))
        if tuple(p.rope_cos.shape) not in allowed or p.rope_sin.shape != p.rope_cos.shape:
            raise ValueError(f"rope_cos/rope_sin must be (S, D) or (B, S, D) = one of {allowed}; "
                             f"got {tuple(p.rope_cos.shape)} and {tuple(p.rope_sin.shape)}")


def _check_device(q: torch.Tensor) -> None:
    """Runs inside the ops' real implementations only: export on a CPU box stays possible."""
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"the Triton kernels need CUDA tensors, got {q.device}; move inputs "
                         f"to a GPU or set TRITON_INTERPRET=1 before importing triton (slow)")


@torch.library.custom_op("cinema::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 kv_lens: torch.Tensor | None, q_norm_weight: torch.Tensor | None,
                 k_norm_weight: torch.Tensor | None, rope_cos: torch.Tensor | None,
                 rope_sin: torch.Tensor | None, scale: float, eps: float) -> torch.Tensor:
    from .fused_attention import launch_attention

    _check_device(q)
    out = torch.empty_like(q)
    launch_attention(q, k, v, out, kv_lens,
                     QKPrologue(q_norm_weight, k_norm_weight, rope_cos, rope_sin, eps), scale)
    return out


@attention_op.register_fake
def _attention_fake(q, k, v, kv_lens, q_norm_weight, k_norm_weight, rope_cos, rope_sin,
                    scale, eps):
    return torch.empty_like(q)


@torch.library.custom_op("cinema::attention_int8", mutates_args=())
def attention_int8_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      kv_lens: torch.Tensor | None, scale: float, q_block: int,
                      k_block: int, smooth_k: bool) -> torch.Tensor:
    from .int8_attention import launch_attention_int8

    _check_device(q)
    out = torch.empty_like(q)
    if q.shape[3] >= MIN_HEAD_DIM_INT8:
        launch_attention_int8(q, k, v, out, kv_lens, scale, q_block, k_block, smooth_k)
        return out
    # zero channels add nothing to Q.Kᵀ and give zero output channels, so padding is exact;
    # only tiny test models have such heads
    padding = (0, MIN_HEAD_DIM_INT8 - q.shape[3])
    wq, wk, wv = (torch.nn.functional.pad(t, padding) for t in (q, k, v))
    wide = torch.empty_like(wq)
    launch_attention_int8(wq, wk, wv, wide, kv_lens, scale, q_block, k_block, smooth_k)
    return out.copy_(wide[..., :q.shape[3]])


@attention_int8_op.register_fake
def _attention_int8_fake(q, k, v, kv_lens, scale, q_block, k_block, smooth_k):
    return torch.empty_like(q)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              kv_lens: torch.Tensor | None = None, prologue: QKPrologue | None = None,
              scale: float | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ * scale) V with the Triton kernel. q (B, H, S_q, D), k/v (B, H, S_kv, D).

    kv_lens: (B,) valid key counts; keys at index >= kv_lens[b] are ignored (0 -> zeros).
    prologue: RMS-norm and/or RoPE applied to Q and K inside the kernel.
    scale: defaults to 1/sqrt(D). Any strides are accepted; the output has q's layout.
    """
    _check_qkv(q, k, v)
    prologue = prologue or QKPrologue()
    _check_prologue(prologue, q.shape[2], k.shape[2], q.shape[0], q.shape[3])
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    return attention_op(q, k, v, _check_kv_lens(kv_lens, q), prologue.q_norm_weight,
                        prologue.k_norm_weight, prologue.rope_cos, prologue.rope_sin, scale,
                        float(prologue.eps))


def attention_int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   kv_lens: torch.Tensor | None = None, scale: float | None = None,
                   quant: Int8Quantization = Int8Quantization()) -> torch.Tensor:
    """SageAttention-style attention: INT8 Q.Kᵀ with smoothed K, FP8 (or fp16) P.V.

    Same shapes and masking as `attention`; no fused prologue: K's mean must be taken after
    RoPE/norm, so those must already be applied.
    """
    _check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    return attention_int8_op(q, k, v, _check_kv_lens(kv_lens, q), scale, quant.q_block,
                             quant.k_block, quant.smooth_k)
