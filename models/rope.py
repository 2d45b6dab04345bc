"""3D rotary position embedding (RoPE) for video tokens, real-valued and export-friendly.

The head dimension is split into (t, h, w) chunks (`DiTConfig.rope_dims`); each chunk rotates
by its own axis position. Only cos/sin tables and elementwise math are used (no complex
numbers), so the same code traces to ONNX/TensorRT and serves as the reference for kernels.

Layout ("rotate half"): the angles of all three axes are concatenated into D/2 frequencies,
and dimension i is paired with dimension i + D/2. cos/sin are therefore (S, D) tables made of
the D/2 angles repeated twice.
"""

from __future__ import annotations

import torch


def check_rope_dims(dims: tuple[int, ...], head_dim: int) -> None:
    """Raise ValueError unless `dims` are even and sum to `head_dim`."""
    if sum(dims) != head_dim or any(d <= 0 or d % 2 for d in dims):
        raise ValueError(f"rope_dims={tuple(dims)} must be positive even numbers summing to "
                         f"head_dim={head_dim}; adjust rope_dims or width/heads")


def rope_3d(positions: torch.Tensor, dims: tuple[int, int, int],
            theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for tokens at `positions`.

    positions: (S, 3) (t, h, w) indices, any numeric dtype. dims: the (t, h, w) split of
    the head dimension D = sum(dims), each even. Returns (cos, sin), each (S, D) float32.
    """
    if positions.dim() != 2 or positions.shape[1] != len(dims):
        raise ValueError(f"positions must be (S, {len(dims)}), got {tuple(positions.shape)}")
    check_rope_dims(dims, sum(dims))
    pos = positions.to(torch.float32)
    angles = []
    for axis, dim in enumerate(dims):
        # standard RoPE frequencies theta^(-2i/dim), one set per axis
        exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim
        freqs = 1.0 / (theta ** exponents)  # (dim/2,)
        angles.append(pos[:, axis:axis + 1] * freqs)  # (S, dim/2)
    angle = torch.cat(angles, dim=-1)  # (S, D/2)
    angle = torch.cat([angle, angle], dim=-1)  # (S, D): dim i and i + D/2 share an angle
    return angle.cos(), angle.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., S, D) by the (S, D) tables from `rope_3d` (broadcast over leading dims;
    tables with leading dims, e.g. per sample (B, 1, S, D), broadcast the same way)."""
    if x.shape[-2:] != cos.shape[-2:] or cos.dim() < 2 or cos.shape != sin.shape:
        raise ValueError(f"apply_rope: x (..., S, D) = {tuple(x.shape)} needs cos/sin of shape "
                         f"(S, D), got {tuple(cos.shape)} and {tuple(sin.shape)}")
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def grid_positions(frames: int, height: int, width: int, frame_offset: int = 0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(t, h, w) positions of a frames x height x width token grid, t-major, as (N, 3) int64.

    Frame indices start at `frame_offset`; the order matches a row-major flatten of
    (frames, height, width), which is how the DiT patchifies.
    """
    t = torch.arange(frames, device=device) + frame_offset
    h = torch.arange(height, device=device)
    w = torch.arange(width, device=device)
    grid = torch.meshgrid(t, h, w, indexing="ij")  # 3 x (frames, height, width)
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def with_text_rows(cos: torch.Tensor, sin: torch.Tensor,
                   text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend `text_len` identity rows (cos=1, sin=0) to (N, D) tables -> (L + N, D) each.

    Text tokens have no position: an identity rotation lets one table cover the joint
    [text, visual] sequence, as a fused RoPE kernel needs.
    """
    ones = cos.new_ones(text_len, cos.shape[-1])
    return torch.cat([ones, cos]), torch.cat([torch.zeros_like(ones), sin])
