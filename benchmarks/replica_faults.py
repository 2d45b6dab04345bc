"""Faults across replicas under load: clients generate through the balancer while one
replica at a time is killed (SIGKILL: its supervisor restarts it), stopped (SIGSTOP, then
SIGCONT) or cut off (its host's link down, then up). Recorded like the soak
(benchmarks/soak.py):

    python -m cinema_trt.benchmarks.replica_faults --duration 240 --out benchmarks/results

Each call ends as exactly one of:
- completed: the video of its seed, bit for bit (each seed's video is taken before the
  faults), at the first attempt;
- resubmitted: the same, after its replica failed mid-generation; every failed attempt's
  error names the replica (`ReplicaFailed`, `ServerStalled`) and the client's retry policy
  (`ClientOptions.resubmit`) sent it again;
- failed clearly: an error naming the cause, within its bound;
- hung: the call outlived `hang_s`: must be 0;
- lost: it ended without a video, or with another video than its seed's: must be 0.
A fault counts as answered when the balancer stopped routing to the replica (DOWN) and,
after the replica was restored, routed to it again (UP).
"""

from __future__ import annotations

import collections
import logging
import random
import re
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinema_trt.serving.faults import wait_for

from .machine import Provenance, describe_machine, describe_source, settings_json
from .replicas import tiny_repository
from .soak import SoakResult, error_kind, harness_config, publish, run_threads

LOG = logging.getLogger(__name__)
# seconds of denoising per call, so a fault mostly lands on running generations
REQUEST: dict[str, Any] = dict(frames=5, height=64, width=64, steps=48, guidance=4.0)
OUTCOMES = ("completed", "resubmitted", "failed_clearly", "hung", "lost")
FAULTS = ("kill", "stop", "link")
NAMED = re.compile(r"replica r\d+")  # how a failed attempt names its replica


@dataclass(frozen=True)
class FaultRunConfig:
    duration: float = 240.0  # seconds of load and faults
    replicas: int = 3
    clients: int = 3
    fault_every: float = 15.0  # seconds from one fault's recovery to the next fault
    outage_s: float = 25.0  # how long a stopped or cut-off replica stays so
    progress_timeout: float = 12.0  # the clients' no-progress bound
    resubmit: int = 2  # the clients' retry policy for a failed replica
    seeds: int = 4  # distinct seeds: each one's video is the reference for its calls
    torch_threads: int = 1
    seed: int = 0
    repository: Path | None = None

    @property
    def hang_s(self) -> float:
        """A call longer than this hung: every attempt may wait its no-progress bound, plus
        the retries' back-off (15.5 s) and a minute of margin for the loaded machine."""
        return (self.resubmit + 1) * self.progress_timeout + 15.5 + 60.0


@dataclass
class FaultRunResult(SoakResult):
    """The soak's tally of calls (its own outcomes), plus the failed attempts."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    failed_attempts: collections.Counter = field(default_factory=collections.Counter)
    unnamed_attempts: int = 0  # failed attempts whose error names no replica: must be 0
    balancer: dict[str, int] = field(default_factory=dict)

    def record(self, outcome: str, seconds: float, error: str | None = None,
               attempts: Sequence[str] = ()) -> None:
        super().record(outcome, seconds, error)
        with self.lock:
            for attempt in attempts:
                named = NAMED.search(attempt)
                kind = attempt.split(":", 1)[0]
                self.failed_attempts[f"{kind} naming {named.group(0) if named else 'none'}"] += 1
                self.unnamed_attempts += named is None


def _client(url: str, config: FaultRunConfig):
    from cinema_trt.serving.client import CinemaClient, ClientOptions

    return CinemaClient(url, ClientOptions(timeout=None, connect_retries=6,
                                           progress_timeout=config.progress_timeout,
                                           resubmit=config.resubmit))


def _call(client, config: FaultRunConfig, result: FaultRunResult, seed: int,
          references: dict[int, np.ndarray]) -> None:
    from cinema_trt.serving.client import CinemaRequestError, ServerStalled

    begin = time.monotonic()
    try:
        got = client.stream("a toy", [_reference_image()], seed=seed, **REQUEST)
    except (CinemaRequestError, ServerStalled, ConnectionError, TimeoutError) as error:
        took = time.monotonic() - begin
        result.record("hung" if took > config.hang_s else "failed_clearly", took,
                      error_kind(error, words=9))
        return
    took = time.monotonic() - begin
    if took > config.hang_s:
        result.record("hung", took, attempts=got.failures)
    elif got.video is None or not np.array_equal(got.video, references[seed]):
        result.record("lost", took, "another video than its seed's", got.failures)
    else:
        result.record("resubmitted" if got.failures else "completed", took,
                      attempts=got.failures)


def inject(replicas, kind: str, replica, outage_s: float) -> dict:
    """One fault on `replica` and its repair; the balancer's reaction, timed."""
    balancer = replicas.balancer
    streams = int(balancer.stats()[replica.name]["scur"] or 0)
    begin = time.monotonic()
    if kind == "kill":
        replica.signal(signal.SIGKILL)  # its supervisor (cinema-trt serve) restarts it
    elif kind == "stop":
        replica.signal(signal.SIGSTOP)
    else:
        replica.set_link(False)
    down = wait_for(lambda: balancer.states()[replica.name].startswith("DOWN"), 30)
    if kind != "kill":
        time.sleep(max(0.0, outage_s - (time.monotonic() - begin)))
        if kind == "stop":
            replica.signal(signal.SIGCONT)
        else:
            replica.set_link(True)
    up = wait_for(lambda: balancer.states()[replica.name] == "UP", 180)
    ok = down is not None and up is not None
    LOG.info("fault %s on %s (%d streams): down after %s s, up again after %s s", kind,
             replica.name, streams, down, up)
    return {"kind": kind, "replica": replica.name, "streams": streams, "ok": ok,
            "down_s": None if down is None else round(down, 2),
            "up_s": None if up is None else round(time.monotonic() - begin, 2)}


def _faults(replicas, config: FaultRunConfig, stop: threading.Event,
            result: FaultRunResult) -> None:
    rng = random.Random(config.seed)
    plan: list[str] = []
    while not stop.wait(config.fault_every):
        plan = plan or rng.sample(FAULTS, len(FAULTS))
        busy = max(replicas.replicas, key=lambda r: (int(
            replicas.balancer.stats()[r.name]["scur"] or 0), rng.random()))
        outcome = inject(replicas, plan.pop(), busy, config.outage_s)
        with result.lock:
            result.faults.append(outcome)


def _healthy(replicas, config: FaultRunConfig, references: dict[int, np.ndarray]) -> bool:
    """Every replica UP in the balancer, and each seed's video once more, unchanged."""
    if wait_for(lambda: set(replicas.balancer.states().values()) == {"UP"}, 120) is None:
        return False
    client = _client(replicas.url, config)
    return all(np.array_equal(client.generate("a toy", [_reference_image()], seed=seed,
                                              **REQUEST), video)
               for seed, video in references.items())


def _reference_image() -> str:
    from cinema_trt.models.media import sample_references

    return str(sample_references()[0])


def run_faults(config: FaultRunConfig) -> FaultRunResult:
    from cinema_trt.serving.replicas import ReplicaSet, ReplicaSetConfig

    result = FaultRunResult()
    with tempfile.TemporaryDirectory(prefix="cinema-replica-faults-") as workdir:
        repo = config.repository or tiny_repository(Path(workdir), config.torch_threads)
        with ReplicaSet(ReplicaSetConfig(repo, replicas=config.replicas)) as replicas:
            client = _client(replicas.url, config)
            references = {s: client.generate("a toy", [_reference_image()], seed=s, **REQUEST)
                          for s in range(config.seeds)}
            stop = threading.Event()

            def load(index: int) -> None:
                n = index
                while not stop.is_set():
                    _call(client, config, result, n % config.seeds, references)
                    n += config.clients

            threads = [threading.Thread(target=load, args=(i,), name=f"faults-client-{i}")
                       for i in range(config.clients)]
            threads.append(threading.Thread(target=_faults, name="faults-injector",
                                            args=(replicas, config, stop, result)))
            result.counts["hung"] += run_threads(threads, stop, config.duration,
                                                 config.hang_s + config.outage_s + 180)
            assert replicas.balancer is not None, "a started set has its balancer"
            backend = replicas.balancer.stats()["BACKEND"]
            result.balancer = {"retries": int(backend["wretr"] or 0),
                               "redispatched": int(backend["wredis"] or 0)}
            result.healthy_at_end = _healthy(replicas, config, references)
    return result


# --- the record -------------------------------------------------------------------------


def fault_record(config: FaultRunConfig, result: FaultRunResult, provenance: dict) -> dict:
    return {"schema": "cinema-trt/replica-faults/1", **provenance,
            "settings": {**settings_json(config), "request": REQUEST, "hang_s": config.hang_s,
                         "balancer": "haproxy"},
            "counts": result.counts, "longest_call_s": round(result.longest_call_s, 2),
            "errors": dict(result.errors.most_common()),
            "failed_attempts": dict(result.failed_attempts.most_common()),
            "unnamed_attempts": result.unnamed_attempts, "faults": result.faults,
            "balancer": result.balancer, "healthy_at_end": result.healthy_at_end}


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = [f"Replica faults for {record['duration_s']:.0f} s on "
             f"{describe_machine(record['machine'])}, {describe_source(record['source'])}, "
             f"{record['started']}: {s['replicas']} replicas behind HAProxy, {s['clients']} "
             f"clients (tiny preset, {s['request']['frames']} frames {s['request']['height']}x"
             f"{s['request']['width']}, {s['request']['steps']} steps, {s['seeds']} seeds), a "
             f"fault ~{s['fault_every']:.0f} s after the last recovery, outages of "
             f"{s['outage_s']:.0f} s, no-progress bound {s['progress_timeout']:.0f} s, "
             f"resubmit {s['resubmit']}.", "", "| calls | count |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {count} |"
              for name, count in record["counts"].items()]
    lines += [f"| failed attempts not naming their replica | {record['unnamed_attempts']} |",
              f"| requests HAProxy redispatched to another replica | "
              f"{record['balancer'].get('redispatched', 0)} |",
              f"| replicas healthy at the end | {'yes' if record['healthy_at_end'] else 'NO'} |",
              "", "| fault | replica | streams on it | s to DOWN | s to UP again |",
              "|---|---|---|---|---|"]
    lines += [f"| {f['kind']} | {f['replica']} | {f['streams']} | {f['down_s']} | {f['up_s']} |"
              for f in record["faults"]]
    if record["failed_attempts"]:
        lines += ["", "| failed attempt (resubmitted) | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in record["failed_attempts"].items()]
    if record["errors"]:
        lines += ["", "| call error (clear) | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in record["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    config, out = harness_config(FaultRunConfig, __doc__, argv, hidden=("torch_threads",))
    logging.getLogger("cinema_trt.serving.tritonserver").setLevel(logging.WARNING)
    run = Provenance.start()
    record = fault_record(config, run_faults(config), run.block())
    publish(record, out, "replica-faults", markdown(record), run)
    good = not (record["counts"]["hung"] or record["counts"]["lost"]
                or record["unnamed_attempts"])
    return 0 if good and record["healthy_at_end"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
