"""Error statistics between a runtime's output and the PyTorch reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float  # max |out - ref|
    scale: float  # max |ref|: what "relative to the output scale" divides by
    cosine: float  # cosine similarity of the flattened tensors
    rel_l2: float  # ||out - ref|| / ||ref||

    @property
    def rel_max(self) -> float:
        return self.max_abs / max(self.scale, 1e-12)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "rel_max": self.rel_max}


def error_stats(out: torch.Tensor, ref: torch.Tensor) -> ErrorStats:
    """Compare `out` with `ref` (same shape) in float64."""
    import torch

    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: output {tuple(out.shape)} vs reference "
                         f"{tuple(ref.shape)}")
    out, ref = out.detach().double().flatten().cpu(), ref.detach().double().flatten().cpu()
    if not torch.isfinite(out).all():
        return ErrorStats(float("inf"), float(ref.abs().max()), float("nan"), float("inf"))
    diff = out - ref
    ref_norm = float(ref.norm())
    cosine = float(torch.nn.functional.cosine_similarity(out, ref, dim=0, eps=1e-30))
    return ErrorStats(max_abs=float(diff.abs().max()), scale=float(ref.abs().max()),
                      cosine=cosine, rel_l2=float(diff.norm()) / max(ref_norm, 1e-30))


def worst(stats: list[ErrorStats]) -> ErrorStats:
    """The element-wise worst of several comparisons (largest errors, smallest cosine)."""
    return ErrorStats(max_abs=max(s.max_abs for s in stats), scale=min(s.scale for s in stats),
                      cosine=min(s.cosine for s in stats), rel_l2=max(s.rel_l2 for s in stats))
