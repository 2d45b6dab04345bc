"""benchmarks/stats.py: percentiles and summaries on samples whose answers are known."""

from __future__ import annotations

import math

import pytest

from cinema_trt.benchmarks.stats import percentile, summarize
from cinema_trt.benchmarks.timing import measure, measure_interleaved

# all expected values below are exact in binary up to a few ulps of 100.0
EXACT = 1e-9


def test_percentiles_of_1_to_100_interpolate_between_order_statistics():
    stats = summarize(list(range(100, 0, -1)))  # order of the samples must not matter
    # position (n - 1) * q / 100 = 0.99 * q: p50 between 50 and 51, p90 at 90.1, p99 at 99.01
    assert stats.p50 == pytest.approx(50.5, abs=EXACT)
    assert stats.p90 == pytest.approx(90.1, abs=EXACT)
    assert stats.p99 == pytest.approx(99.01, abs=EXACT)
    assert (stats.count, stats.min, stats.max) == (100, 1.0, 100.0)
    assert stats.mean == pytest.approx(50.5, abs=EXACT)
    # population std of 1..n is sqrt((n^2 - 1) / 12)
    assert stats.std == pytest.approx(math.sqrt((100 ** 2 - 1) / 12), abs=EXACT)


def test_percentiles_of_four_samples():
    stats = summarize([40.0, 10.0, 30.0, 20.0])
    assert stats.p50 == pytest.approx(25.0, abs=EXACT)  # mean of the middle two
    assert stats.p90 == pytest.approx(37.0, abs=EXACT)  # 2.7 -> 30 + 0.7 * 10
    assert stats.p99 == pytest.approx(39.7, abs=EXACT)  # 2.97 -> 30 + 0.97 * 10


def test_one_sample_is_every_percentile():
    stats = summarize([7.5])
    assert stats.p50 == stats.p90 == stats.p99 == stats.min == stats.max == 7.5
    assert stats.std == 0.0


def test_percentile_edges_are_min_and_max():
    ordered = [1.0, 2.0, 10.0]
    assert percentile(ordered, 0) == 1.0 and percentile(ordered, 100) == 10.0


@pytest.mark.parametrize("samples, message", [
    ([], "zero samples"),
    ([1.0, float("nan")], "finite"),
    ([1.0, -2.0], ">= 0"),
])
def test_bad_samples_are_rejected(samples, message):
    with pytest.raises(ValueError, match=message):
        summarize(samples)


def test_percentile_outside_0_100_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_measure_calls_warmup_plus_runs_times_and_returns_runs_samples():
    calls = []
    samples = measure(lambda: calls.append(1), runs=3, warmup=2)
    assert len(calls) == 5 and len(samples) == 3
    assert all(s >= 0 for s in samples)


def test_measure_rejects_zero_runs():
    with pytest.raises(ValueError, match="runs=0 must be >= 1"):
        measure(lambda: None, runs=0, warmup=0)


def test_interleaved_measurement_warms_each_call_then_times_them_round_robin():
    calls = []
    samples = measure_interleaved([lambda: calls.append("a"), lambda: calls.append("b")],
                                  runs=3, warmup=1, devices=["cpu", "cpu"])
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [len(s) for s in samples] == [3, 3]
