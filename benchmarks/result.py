"""What a benchmark run produced: `Measurement`s and the `BenchResult` record around them."""

from __future__ import annotations

from dataclasses import dataclass, field

from cinema_trt.models.stages import STAGE_NAMES

from .config import BenchConfig
from .plan import Skip
from .stats import Stats

# "first_frame": a served request's time until its first decoded frames reached the client
TARGETS = (*STAGE_NAMES, "pipeline", "served", "first_frame")
# 2: served requests stream their frames; `first_frame` measurements and `first_frame` rows
SCHEMA = "cinema-trt/bench-latency/2"


@dataclass(frozen=True)
class Measurement:
    runtime: str
    precision: str
    target: str  # a stage name, "pipeline", "served" or "first_frame"
    samples_ms: tuple[float, ...]
    stats: Stats

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "target": self.target,
                "stats": self.stats.to_dict(), "samples_ms": list(self.samples_ms)}


@dataclass(frozen=True)
class BenchResult:
    settings: BenchConfig
    provenance: dict  # machine.Provenance.block(): started, duration, source, machine, versions
    config: dict  # the resolved CinemaConfig
    request: dict
    shapes: dict  # {stage: {tensor: {shape, dtype}}}
    clock: str
    variants: tuple[dict, ...]  # runtime, precision, stage precisions, setup
    measurements: tuple[Measurement, ...]
    skipped: tuple[Skip, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def find(self, runtime: str, precision: str, target: str) -> Measurement | None:
        for m in self.measurements:
            if (m.runtime, m.precision, m.target) == (runtime, precision, target):
                return m
        return None

    def _against(self, target: str, base: str, name: str, base_name: str) -> list[dict]:
        """`target` against `base` of the same variant, per variant that has both: their
        p50s and minima (other processes only ever add time, so on a shared machine the
        minima are the least disturbed pair) and the ratios, keyed `<name>_p50_ms` etc."""
        rows = []
        for m in (m for m in self.measurements if m.target == target):
            other = self.find(m.runtime, m.precision, base)
            if other is not None:
                rows.append({"runtime": m.runtime, "precision": m.precision,
                             f"{name}_p50_ms": m.stats.p50,
                             f"{base_name}_p50_ms": other.stats.p50,
                             "ratio": m.stats.p50 / other.stats.p50,
                             f"{name}_min_ms": m.stats.min,
                             f"{base_name}_min_ms": other.stats.min,
                             "ratio_min": m.stats.min / other.stats.min})
        return rows

    def serving_overhead(self) -> list[dict]:
        """served / in-process pipeline latency, per variant that was served."""
        return [{**row, "overhead_ms": row["served_p50_ms"] - row["in_process_p50_ms"]}
                for row in self._against("served", "pipeline", "served", "in_process")]

    def first_frame(self) -> list[dict]:
        """Time to first frame next to the served request's whole latency, per variant
        served (the frames streamed as decoded)."""
        return self._against("first_frame", "served", "first_frame", "served")

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **self.provenance,
                "preset": self.config["name"], "settings": self.settings.to_dict(),
                "clock": self.clock, "config": self.config, "request": self.request,
                "shapes": self.shapes, "variants": list(self.variants),
                "measurements": [m.to_dict() for m in self.measurements],
                "serving_overhead": self.serving_overhead(),
                "first_frame": self.first_frame(),
                "skipped": [vars(s) for s in self.skipped], "notes": list(self.notes)}
