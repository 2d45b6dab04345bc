"""Triton helpers shared by the attention and quantization kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def program_coords(H, LENS, N_CTX, HAS_LENS: tl.constexpr):
    """Where this program works, for a grid of (row blocks, B * H).

    Returns (row block, batch, head, valid rows): batch and head are int64 so that
    `batch * stride_b` cannot overflow on large tensors; valid rows are LENS[batch] clamped
    to N_CTX (N_CTX when HAS_LENS is off, LENS may then be None).
    """
    blk = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    n_valid = N_CTX
    if HAS_LENS:
        n_valid = tl.minimum(tl.load(LENS + off_b), N_CTX)
    return blk, off_b, off_h, n_valid
