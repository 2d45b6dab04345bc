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

    def serving_overhead(self) -> list[dict]:
        """served / in-process pipeline latency, per variant that was served: at p50, and
        at the minimum (other processes only ever add time, so on a shared machine the
        minima are the least disturbed pair)."""
        rows = []
        for served in (m for m in self.measurements if m.target == "served"):
            local = self.find(served.runtime, served.precision, "pipeline")
            if local is not None:
                rows.append({"runtime": served.runtime, "precision": served.precision,
                             "served_p50_ms": served.stats.p50,
                             "in_process_p50_ms": local.stats.p50,
                             "overhead_ms": served.stats.p50 - local.stats.p50,
                             "ratio": served.stats.p50 / local.stats.p50,
                             "served_min_ms": served.stats.min,
                             "in_process_min_ms": local.stats.min,
                             "ratio_min": served.stats.min / local.stats.min})
        return rows

    def first_frame(self) -> list[dict]:
        """Time to first frame next to the served request's whole latency, per variant
        served: at p50 and at the minimum (the least disturbed calls)."""
        rows = []
        for first in (m for m in self.measurements if m.target == "first_frame"):
            served = self.find(first.runtime, first.precision, "served")
            if served is not None:
                rows.append({"runtime": first.runtime, "precision": first.precision,
                             "first_frame_p50_ms": first.stats.p50,
                             "served_p50_ms": served.stats.p50,
                             "ratio": first.stats.p50 / served.stats.p50,
                             "first_frame_min_ms": first.stats.min,
                             "served_min_ms": served.stats.min,
                             "ratio_min": first.stats.min / served.stats.min})
        return rows

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **self.provenance,
                "preset": self.config["name"], "settings": self.settings.to_dict(),
                "clock": self.clock, "config": self.config, "request": self.request,
                "shapes": self.shapes, "variants": list(self.variants),
                "measurements": [m.to_dict() for m in self.measurements],
                "serving_overhead": self.serving_overhead(),
                "first_frame": self.first_frame(),
                "skipped": [vars(s) for s in self.skipped], "notes": list(self.notes)}
