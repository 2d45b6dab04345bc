"""Per-stage latency of served requests, from Triton's statistics extension.

Triton keeps cumulative counters per model: successful calls, time queued, time inside the
model's `execute`. Two snapshots around a request give each stage model's share of it.
The `cinema` orchestrator is left out: it is decoupled and hands each request to a worker
thread, so its `execute` returns at once and its counters measure nothing useful; the
client's wall time stands for the whole request instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cinema_trt.models.stages import STAGE_NAMES
from cinema_trt.models.text_table import text_table

T = TypeVar("T")


@dataclass(frozen=True)
class ModelCounters:
    calls: int = 0
    success_ns: int = 0  # queue + compute of every successful call
    compute_ns: int = 0
    compute_calls: int = 0
    queue_ns: int = 0
    queue_calls: int = 0

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(*(getattr(self, f.name) - getattr(other, f.name)
                               for f in dataclasses.fields(self)))


Snapshot = dict[str, ModelCounters]


@dataclass(frozen=True)
class StageLatency:
    """One stage model's share of a request (counter deltas over it)."""

    model: str
    calls: int
    compute_ms: float  # mean time in execute per call
    queue_ms: float  # mean time waiting for a free instance per call
    total_ms: float  # every call, queue + compute


def snapshot(url: str) -> Snapshot:
    """The cumulative counters of every loaded model, over gRPC."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        response = client.get_inference_statistics("")  # "": every model
    finally:
        client.close()
    counters = {}
    for model in response.model_stats:
        s = model.inference_stats
        counters[model.name] = ModelCounters(s.success.count, s.success.ns, s.compute_infer.ns,
                                             s.compute_infer.count, s.queue.ns, s.queue.count)
    return counters


def wait_until_stable(read: Callable[[], T], interval: float, timeout: float
                      ) -> tuple[T, bool]:
    """(value, settled): `read()` once two reads `interval` s apart agree, or its last value
    with settled=False when they still differ after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if now == last:
            return now, True
        last = now
    return last, False


def settled_snapshot(url: str, timeout: float = 5.0) -> Snapshot:
    """A snapshot once two reads 0.2 s apart agree: a stage model updates its counters just
    after it answers, so the last call of a request may land after the client's reply."""
    return wait_until_stable(lambda: snapshot(url), 0.2, timeout)[0]


def stage_latency(before: Snapshot, after: Snapshot) -> tuple[StageLatency, ...]:
    """Each served stage model's share between two snapshots: every pipeline stage
    (per-stage layout) or none (shared layout, serving/layouts.py: the stages run inside
    `cinema`, which Triton cannot time)."""

    def mean_ms(ns: int, count: int) -> float:
        return ns / count / 1e6 if count else 0.0

    rows = []
    for model in (m for m in STAGE_NAMES if m in after):
        d = after.get(model, ModelCounters()) - before.get(model, ModelCounters())
        rows.append(StageLatency(model, d.calls, mean_ms(d.compute_ns, d.compute_calls),
                                 mean_ms(d.queue_ns, d.queue_calls), d.success_ns / 1e6))
    return tuple(rows)


def format_latency_table(latency: tuple[StageLatency, ...], request_seconds: float) -> str:
    """A plain-text table: one row per stage model, then the request's wall time."""
    rows = [("model", "calls", "compute ms (mean)", "queue ms (mean)", "total ms")]
    for r in latency:
        rows.append((r.model, str(r.calls), f"{r.compute_ms:.2f}", f"{r.queue_ms:.2f}",
                     f"{r.total_ms:.1f}"))
    rows.append(("request (client wall time)", "1", "", "", f"{request_seconds * 1e3:.1f}"))
    return text_table(rows, right=True)
