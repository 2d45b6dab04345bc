"""The fault injector of the soak (benchmarks/soak.py): killed stubs and issue 13's hostile
requests, each with the answer it must get, dealt in shuffled rounds (`FaultPlan`).

Every fault returns a `FaultOutcome`: what was done, whether the server answered as it
must (a 4xx / INVALID_ARGUMENT for a hostile request; for a killed stub, not ready within
`NOT_READY_S` and serving again within `SERVING_S`), and the measured times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from cinema_trt.models.stages import CONNECTOR, STAGE_NAMES
from cinema_trt.serving.protocol import ORCHESTRATOR
from cinema_trt.serving.watchdog import live_stubs

MODELS = (*STAGE_NAMES, ORCHESTRATOR)  # every model of a per-stage repository
NOT_READY_S = 5.0  # issue 13's acceptance: a dead stub is reported within 5 s
SERVING_S = 30.0  # ... and serves again within 30 s
HUGE = 100_000_000  # [1, 1e8, 64] FP32: 25.6 GB declared in a 1.3 KB request
WRAPS = 2 ** 62  # [1, 2**62, 64]: the element count wraps to 0 in Triton 2.51


@dataclass(frozen=True)
class FaultOutcome:
    kind: str
    ok: bool  # the server answered as it must
    detail: str
    not_ready_s: float | None = None
    serving_s: float | None = None


def wait_for(predicate, timeout: float) -> float | None:
    """Seconds until `predicate()` held (asked every 0.1 s; an exception counts as not
    yet), or None after `timeout`."""
    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        try:
            if predicate():
                return time.monotonic() - begin
        except Exception:  # the server may be busy reloading: ask again
            pass
        time.sleep(0.1)
    return None


def _detected(server, model: str, since: float) -> float | None:
    """When the watchdog found `model` dead (and unloaded it) after `since`: a reload can
    end before a poll of readiness sees the model not ready."""
    times = [t for m, t in server.watchdog.detections if m == model and t >= since] \
        if server.watchdog is not None else []
    return min(times) if times else None


def _reloads(server, model: str) -> int:
    return sum(m == model for m, _ in server.watchdog.events) if server.watchdog else 0


def kill_stub(server, grpc, model: str) -> FaultOutcome:
    """SIGKILL the model's stub; it must turn not ready, then serve again."""
    pid = live_stubs(server.pid).get(f"{model}_0_0")
    if pid is None:  # still reloading after an earlier fault
        return FaultOutcome(f"kill {model}", True, "no live stub (reloading): skipped")
    reloads = _reloads(server, model)
    begin = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    gone = wait_for(lambda: not grpc.is_model_ready(model) or _detected(server, model, begin),
                 NOT_READY_S)
    detected = _detected(server, model, begin)
    if gone is not None and detected is not None:  # the watchdog's own time
        gone = detected - begin
    # serving again: the watchdog's reload of this model finished and it answers ready
    back = wait_for(lambda: _reloads(server, model) > reloads and grpc.is_model_ready(model),
                 SERVING_S + NOT_READY_S)
    serving = None if back is None else time.monotonic() - begin
    ok = gone is not None and serving is not None and serving <= SERVING_S
    return FaultOutcome(f"kill {model}", ok, f"pid {pid}", gone, serving)


def _connector_json(seq: int) -> bytes:
    return json.dumps({"inputs": [
        {"name": "hidden_states", "shape": [1, seq, 64], "datatype": "FP32",
         "data": [0.5] * 320},
        {"name": "attention_mask", "shape": [1, 5], "datatype": "INT64", "data": [1] * 5},
    ]}).encode()


def hostile_http(server, seq: int) -> FaultOutcome:
    """The issue's curl request; HTTP inference is admin-only, so 403 before parsing."""
    request = urllib.request.Request(f"{server.endpoints.http}/v2/models/connector/infer",
                                     data=_connector_json(seq),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return FaultOutcome(f"http seq={seq}", False, f"no answer: {error}")
    return FaultOutcome(f"http seq={seq}", 400 <= status < 500, f"HTTP {status}")


def _connector_call(grpc, shape: list[int], hidden: bytes, mask: np.ndarray) -> str:
    """The gRPC status of one connector call ("OK" when it succeeded)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput("hidden_states", shape, "FP32")
    tensor._raw_content = hidden  # raw bytes of any length: the server must check them
    masked = grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")
    masked.set_data_from_numpy(mask)
    try:
        grpc.infer(CONNECTOR.name, [tensor, masked], client_timeout=60)
    except InferenceServerException as error:
        return f"{error.status()}: {error.message()}"
    return "OK"


def hostile_grpc(grpc, seq: int) -> FaultOutcome:
    """The same request over gRPC with its 320 values (1280 bytes)."""
    answer = _connector_call(grpc, [1, seq, 64], bytes(1280), np.ones((1, 5), np.int64))
    return FaultOutcome(f"grpc seq={seq}", "INVALID_ARGUMENT" in answer, answer[:160])


def meaningless_grpc(grpc) -> FaultOutcome:
    """NaN features: the stage must refuse them naming the input."""
    hidden = np.full((1, 5, 64), np.nan, np.float32).tobytes()
    answer = _connector_call(grpc, [1, 5, 64], hidden, np.ones((1, 5), np.int64))
    ok = "INVALID_ARGUMENT" in answer and "'hidden_states' holds" in answer
    return FaultOutcome("grpc NaN", ok, answer[:160])


class FaultPlan:
    """Faults in rounds: each round kills every model's stub once and sends every hostile
    request once, in a shuffled order, so a soak of a few rounds covers them all.
    `models`: the served ones (`TritonServer.models`); the hostile requests go to the
    connector stage model, so a shared-layout repository (no stage models: no stage is
    reachable over gRPC, serving/layouts.py) gets the stub kills only."""

    def __init__(self, rng: random.Random, models: tuple[str, ...] = MODELS):
        self.rng = rng
        self.models = models
        self.pending: list[tuple[str, str | int | None]] = []

    def _round(self) -> list[tuple[str, str | int | None]]:
        faults: list[tuple[str, str | int | None]] = [("kill", m) for m in self.models]
        if CONNECTOR.name in self.models:
            faults += [(protocol, seq) for protocol in ("http", "grpc")
                       for seq in (HUGE, WRAPS)]
            faults.append(("nan", None))
        self.rng.shuffle(faults)
        return faults

    def inject(self, server, grpc) -> FaultOutcome:
        if not self.pending:
            self.pending = self._round()
        kind, arg = self.pending.pop()
        if kind == "kill":
            return kill_stub(server, grpc, str(arg))
        if kind == "http":
            return hostile_http(server, int(arg or 0))
        if kind == "grpc":
            return hostile_grpc(grpc, int(arg or 0))
        return meaningless_grpc(grpc)
