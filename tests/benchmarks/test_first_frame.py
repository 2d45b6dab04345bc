"""Time to first frame is measured on the same calls as the served latency it sits beside:
the timed ones, never the warm-ups (whose first call pays one-off costs)."""

import pytest

from cinema_trt.benchmarks.measurements import Job


def _served(first_frame_ms):
    return Job("torch", "fp32", "served", lambda: None, clock="cpu",
               first_frame_ms=first_frame_ms)


def test_the_first_frame_measurement_holds_the_timed_calls_only():
    # one warm-up (a slow first call), then three timed calls
    (m,) = _served([900.0, 10.0, 30.0, 20.0]).first_frame(runs=3)
    assert (m.runtime, m.precision, m.target) == ("torch", "fp32", "first_frame")
    assert m.samples_ms == (10.0, 30.0, 20.0) and m.stats.p50 == 20.0


def test_jobs_that_stream_nothing_add_no_measurement():
    assert _served(None).first_frame(runs=3) == []
    assert Job("torch", "fp32", "pipeline", lambda: None).first_frame(runs=3) == []


def test_fewer_first_frames_than_timed_calls_is_an_error():
    with pytest.raises(ValueError, match="2 first-frame times for 3 runs"):
        _served([10.0, 20.0]).first_frame(runs=3)
