"""Latency statistics over a list of samples: percentiles, mean, spread.

Percentiles interpolate linearly between the two nearest order statistics (numpy's default
method, also Excel's PERCENTILE.INC), so p50 of an even count is the mean of the middle two.
With N samples, p99 is only meaningful when N >= 100; below that it lies between the two
largest samples, which the record states by keeping every sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Stats:
    """Summary of latency samples, all in milliseconds."""

    count: int
    mean: float
    std: float  # population standard deviation: the samples are the whole measurement
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted samples, linear interpolation."""
    if not sorted_samples:
        raise ValueError("percentile of no samples is undefined; measure at least one run")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} must be in [0, 100]")
    position = (len(sorted_samples) - 1) * q / 100.0  # fractional index into the order
    low = math.floor(position)
    high = min(low + 1, len(sorted_samples) - 1)
    weight = position - low
    return sorted_samples[low] * (1.0 - weight) + sorted_samples[high] * weight


def summarize(samples: Sequence[float]) -> Stats:
    """Stats of latency samples in ms; ValueError for no samples or non-finite values."""
    values = [float(s) for s in samples]
    if not values:
        raise ValueError("cannot summarize zero samples; runs must be >= 1")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"latency samples must be finite and >= 0 ms, got {bad[:3]}")
    ordered = sorted(values)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    p50, p90, p99 = (percentile(ordered, q) for q in PERCENTILES)
    return Stats(count=len(values), mean=mean, std=std, min=ordered[0], p50=p50, p90=p90,
                 p99=p99, max=ordered[-1])
