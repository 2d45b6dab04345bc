"""The typed record of an export's check against PyTorch: what the manifest keeps
(export/manifest.py), what the exporter's gates fill in (export/check.py) and what the
accuracy comparisons read back (engines/accuracy.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .compare import ErrorStats

# check case i is drawn by `Graph.sample_inputs` with seed CHECK_SEED + i, so anyone can
# draw the very inputs a manifest's errors were measured on
CHECK_SEED = 100
TORCH_FP32 = "torch fp32"  # the reference every export gate measures against


@dataclass(frozen=True)
class Validation:
    """What an export's check measured, as its manifest records it (empty: none ran)."""

    reference: str = ""  # what the graph was compared with: TORCH_FP32 (+ how it was held)
    graph: str = ""  # what ran the graph
    cases: tuple[dict[str, int], ...] = ()  # case i drawn with seed CHECK_SEED + i
    error: ErrorStats | None = None  # the worst over the cases
    spread: ErrorStats | None = None  # fp16/bf16: how far the reduced-precision module is
    tolerance: float | None = None  # the rel_max gate it passed (not FP8)
    min_cosine: float | None = None  # the cosine gate it passed (FP8)
    skipped: str = ""  # why no check ran (TensorRT plugin nodes)
    # weight-only: the torch module with its weights rounded in the format, vs torch fp32
    # (export/weight_only.emulate_rtn): what the graph's gate is derived from
    emulated: ErrorStats | None = None

    @property
    def against_torch_fp32(self) -> bool:
        """Whether its error is to torch fp32 itself: the common reference of two exports'
        errors, which bounds their distance to each other."""
        return self.reference == TORCH_FP32 and self.error is not None

    def to_dict(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped}
        if self.error is None:
            return {}
        data: dict[str, Any] = {"reference": self.reference, "graph": self.graph,
                                "cases": [dict(c) for c in self.cases], **self.error.to_dict()}
        for name in ("spread", "emulated"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name).to_dict()
        for name in ("tolerance", "min_cosine"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Validation:
        def stats(values: dict[str, Any] | None) -> ErrorStats | None:
            return None if values is None else ErrorStats(
                **{f.name: values[f.name] for f in dataclasses.fields(ErrorStats)})

        if "max_abs" not in data:
            return cls(skipped=data.get("skipped", ""))
        return cls(data["reference"], data["graph"], tuple(data["cases"]), stats(data),
                   stats(data.get("spread")), data.get("tolerance"), data.get("min_cosine"),
                   emulated=stats(data.get("emulated")))
