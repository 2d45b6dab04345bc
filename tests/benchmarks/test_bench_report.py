"""The result's derived numbers and the markdown, on hand-written samples with known answers."""

from __future__ import annotations

import pytest

from cinema_trt.benchmarks.config import BenchConfig
from cinema_trt.benchmarks.plan import Skip
from cinema_trt.benchmarks.report import to_markdown
from cinema_trt.benchmarks.result import BenchResult, Measurement
from cinema_trt.benchmarks.stats import summarize


def _m(runtime, precision, target, samples):
    return Measurement(runtime, precision, target, tuple(samples), summarize(samples))


@pytest.fixture
def result():
    measurements = (
        _m("torch", "fp32", "dit", [10.0, 10.0, 12.0]),
        _m("torch", "fp32", "pipeline", [100.0, 100.0, 104.0]),
        _m("torch", "fp32", "served", [110.0, 120.0, 130.0]),
        _m("torch", "fp32", "first_frame", [88.0, 96.0, 104.0]),
        _m("ort", "fp32", "dit", [5.0, 5.0, 6.0]),
        _m("ort", "fp32", "pipeline", [80.0, 80.0, 81.0]),
    )
    machine = {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "gpu": None}
    request = {"frames": 5, "width": 64, "height": 64, "steps": 4, "guidance": 4.0,
               "refs": ["a.png"], "seed": 0}
    return BenchResult(
        settings=BenchConfig(preset="tiny", device="cpu", runs=3, served=True),
        provenance={"started": "2030-01-02T03:04:05+00:00", "duration_s": 1.0,
                    "machine": machine, "versions": {"torch": "2.x"},
                    "source": {"commit": "0123456789ab" + "c" * 28, "dirty": True}},
        config={"name": "tiny"}, request=request, shapes={},
        clock="perf_counter_ns", variants=(), measurements=measurements,
        skipped=(Skip("ort", "fp32", "no ORT backend here", target="served"),),
        notes=("a note",))


def test_serving_overhead_compares_served_with_the_same_runtime_in_process(result):
    (row,) = result.serving_overhead()  # ort was not served: no row for it
    assert (row["runtime"], row["precision"]) == ("torch", "fp32")
    assert row["ratio"] == pytest.approx(120.0 / 100.0)  # medians
    assert row["overhead_ms"] == pytest.approx(20.0)
    assert row["ratio_min"] == pytest.approx(110.0 / 100.0)  # minima


def test_markdown_shows_p50_with_speedup_over_the_first_variant(result):
    lines = to_markdown(result).splitlines()
    assert "| target | torch fp32 | ort fp32 |" in lines
    assert "| dit (1 step, CFG x2) | 10.00 | 5.00 (2.00x) |" in lines
    assert "| pipeline (whole request) | 100.00 | 80.00 (1.25x) |" in lines
    assert "| served (Triton, gRPC) | 120.00 | – |" in lines
    assert "- ort fp32 (served): no ORT backend here" in lines
    assert "- a note" in lines


def test_time_to_first_frame_sits_next_to_the_served_latency_as_a_ratio(result):
    (row,) = result.first_frame()  # only torch was served
    assert (row["runtime"], row["precision"]) == ("torch", "fp32")
    assert row["ratio"] == pytest.approx(96.0 / 120.0)  # medians
    assert row["ratio_min"] == pytest.approx(88.0 / 110.0)  # minima
    assert result.to_dict()["first_frame"] == [row]
    lines = to_markdown(result).splitlines()
    assert "| torch fp32 | 96.0 ms | 120.0 ms | 0.800 | 0.800 |" in lines
    assert "| served, to first frame | 96.00 | – |" in lines


def test_the_record_names_the_commit_it_measured(result):
    assert result.to_dict()["source"] == {"commit": "0123456789ab" + "c" * 28, "dirty": True}
    assert "- source: commit 0123456789ab, uncommitted changes" in \
        to_markdown(result).splitlines()


def test_record_lists_every_sample_and_the_schema(result):
    record = result.to_dict()
    assert record["schema"] == "cinema-trt/bench-latency/2"
    assert record["measurements"][2]["samples_ms"] == [110.0, 120.0, 130.0]
    assert record["skipped"] == [{"runtime": "ort", "precision": "fp32",
                                  "reason": "no ORT backend here", "target": "served"}]
