"""`--threads` reaches ONNX Runtime: `ort_runners(..., threads=n)` (what the benchmark's ort
variants load) gives every session n intra-op threads (on the exported tiny connector)."""

from __future__ import annotations

import pytest

from cinema_trt.export.ort import ort_runners


def _intra_op_threads(runner) -> int:
    return runner.session.get_session_options().intra_op_num_threads


@pytest.mark.parametrize("threads", [1, 3])
def test_the_thread_count_reaches_the_session_options(exported, threads):
    runners = ort_runners(exported, providers=("CPUExecutionProvider",), threads=threads)
    assert list(runners) == ["connector"]
    assert _intra_op_threads(runners["connector"]) == threads


def test_without_a_thread_count_ort_picks_its_default(exported):
    # 0 is ORT's "one thread per physical core", the default before `threads` existed
    runners = ort_runners(exported, providers=("CPUExecutionProvider",))
    assert _intra_op_threads(runners["connector"]) == 0
