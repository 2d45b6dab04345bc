"""The fault soak: concurrent clients for minutes while stubs are killed and hostile requests
arrive (serving/faults.py); every call is classified and the server must be healthy at
the end. Loopback only, bounded in time. A benchmark harness: it drives the serving layer
from outside, as a user's clients would.

    python -m cinema_trt.benchmarks.soak --duration 180 --out benchmarks/results

Each call ends as exactly one of:
- succeeded: the video arrived with the requested shape;
- failed clearly: a client error naming the cause (the server's error, ServerStalled
  after the no-progress bound, ConnectionError after the retries) within its bound;
- hung: the call outlived `hang_s` (its no-progress bound plus the retries' back-off
  and the longest successful call's margin): must be 0;
- lost: accepted (a progress message arrived) and then ended without a video and
  without an error, or with a video of the wrong shape: must be 0.

Just over 300 lines on purpose: the harness plumbing the replica fault run reuses
(`harness_config`, `run_threads`, `publish`, `error_kind`) lives with the harness it came
from rather than in a module of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import functools
import logging
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .machine import Provenance, describe_machine, describe_source, settings_json
from .replicas import tiny_repository, write_record

T = TypeVar("T")

LOG = logging.getLogger(__name__)
REQUEST: dict[str, Any] = dict(frames=5, height=32, width=32, steps=4, guidance=4.0)
OUTCOMES = ("succeeded", "failed_clearly", "hung", "lost")
RETRIES = 6  # the clients' attempts to connect and to start a request


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 180.0  # seconds of load and faults
    clients: int = 3  # concurrent callers (the last one uses AsyncCinemaClient)
    fault_every: float = 6.0  # mean seconds between faults (after the last one's recovery)
    progress_timeout: float = 20.0  # the clients' no-progress bound
    seed: int = 0
    repository: Path | None = None  # None: the tiny preset, random weights of seed 0

    @property
    def hang_s(self) -> float:
        """A call longer than this counts as hung: two full no-progress waits (a retried
        request starts over), two rounds of the retries' back-off (15.5 s each), a minute
        of margin for the loaded 2-core machine."""
        return 2 * self.progress_timeout + 2 * 15.5 + 60.0


@dataclass
class SoakResult:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    errors: collections.Counter = field(default_factory=collections.Counter)
    faults: list[dict] = field(default_factory=list)
    longest_call_s: float = 0.0
    recoveries: list[tuple[str, float]] = field(default_factory=list)
    healthy_at_end: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.counts[outcome] += 1
            self.longest_call_s = max(self.longest_call_s, seconds)
            if error:
                self.errors[error] += 1


def error_kind(error: BaseException, words: int = 8) -> str:
    """A short label for the error table: the type and the message's first words."""
    return f"{type(error).__name__}: {' '.join(str(error).split()[:words])}"


def _classify(call, config: SoakConfig, result: SoakResult) -> None:
    from cinema_trt.serving.client import CinemaRequestError, ServerStalled

    accepted = threading.Event()
    begin = time.monotonic()
    try:
        video = call(lambda step, total: accepted.set())
    except (CinemaRequestError, ServerStalled, ConnectionError, TimeoutError) as error:
        took = time.monotonic() - begin
        silent = "finished the request without" in str(error)  # ended with no answer
        if took > config.hang_s:
            result.record("hung", took, error_kind(error))
        elif silent and accepted.is_set():
            result.record("lost", took, error_kind(error))
        else:
            result.record("failed_clearly", took, error_kind(error))
        return
    took = time.monotonic() - begin
    shape = (REQUEST["frames"], REQUEST["height"], REQUEST["width"], 3)
    if took > config.hang_s:
        result.record("hung", took)
    elif video is None or video.shape != shape:
        result.record("lost", took, f"video shape {getattr(video, 'shape', None)}")
    else:
        result.record("succeeded", took)


def _sync_client(url: str, config: SoakConfig, stop: threading.Event, result: SoakResult,
                 seed: int, asynchronous: bool) -> None:
    from cinema_trt.models.media import sample_references
    from cinema_trt.serving.client import AsyncCinemaClient, CinemaClient, ClientOptions

    # 6 attempts wait 0.5 + 1 + 2 + 4 + 8 s: longer than a stage's reload after a kill
    options = ClientOptions(timeout=None, connect_retries=RETRIES,
                            progress_timeout=config.progress_timeout)
    refs = [str(sample_references()[seed % 4])]
    aio, sync = AsyncCinemaClient(url, options), CinemaClient(url, options)

    def call(progress, n: int):
        params = {**REQUEST, "seed": seed * 100_000 + n}
        if asynchronous:
            return asyncio.run(aio.generate("a toy", refs, progress, **params))
        return sync.generate("a toy", refs, progress, **params)

    n = 0
    while not stop.is_set():
        n += 1
        _classify(functools.partial(call, n=n), config, result)


def _faults(server, config: SoakConfig, stop: threading.Event, result: SoakResult) -> None:
    import tritonclient.grpc as grpcclient

    from cinema_trt.serving.faults import FaultPlan

    rng = random.Random(config.seed)
    plan = FaultPlan(rng, server.models())  # the repository's layout decides which
    grpc = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        while not stop.wait(rng.expovariate(1.0 / config.fault_every)):
            outcome = plan.inject(server, grpc)
            LOG.info("fault %s: ok=%s %s", outcome.kind, outcome.ok, outcome.detail)
            with result.lock:
                result.faults.append(dataclasses.asdict(outcome))
    finally:
        grpc.close()


def _healthy(server, timeout: float = 60.0) -> bool:
    """Every model ready and one more request served, within `timeout`."""
    import tritonclient.grpc as grpcclient

    from cinema_trt.models.media import sample_references
    from cinema_trt.serving.client import CinemaClient, ClientOptions
    from cinema_trt.serving.faults import wait_for

    models = server.models()  # every stage model and cinema, or cinema alone (shared)
    grpc = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        if wait_for(lambda: all(grpc.is_model_ready(m) for m in models), timeout) is None:
            return False
    finally:
        grpc.close()
    client = CinemaClient(server.endpoints.grpc, ClientOptions(timeout=120))
    video = client.generate("a toy", [str(sample_references()[0])], **REQUEST)
    return server.running and video.shape[0] == REQUEST["frames"]


def run_threads(threads: list[threading.Thread], stop: threading.Event, duration: float,
                join_timeout: float) -> int:
    """Run the client threads and, last, the fault injector for `duration` s, then set
    `stop` (Ctrl-C too: the clients loop until stopped) and join each for `join_timeout` s;
    returns how many clients are still running."""
    for thread in threads:
        thread.start()
    try:
        stop.wait(duration)
    finally:
        stop.set()
    for thread in threads:
        thread.join(timeout=join_timeout)
    return sum(thread.is_alive() for thread in threads[:-1])


def run_soak(config: SoakConfig) -> SoakResult:
    """Start a server, load it and inject faults for `config.duration`, then check it."""
    from cinema_trt.serving.server import ServerConfig, TritonServer

    result = SoakResult()
    with tempfile.TemporaryDirectory(prefix="cinema-soak-") as workdir:
        repo = config.repository or tiny_repository(Path(workdir), torch_threads=0)
        with TritonServer(ServerConfig(repo, startup_timeout=300, stop_timeout=10)) as server:
            stop = threading.Event()
            threads = [threading.Thread(target=_sync_client, name=f"soak-client-{i}", args=(
                server.endpoints.grpc, config, stop, result, i, i == config.clients - 1))
                for i in range(config.clients)]
            threads.append(threading.Thread(target=_faults, name="soak-faults",
                                            args=(server, config, stop, result)))
            # calls still running past their bound
            result.counts["hung"] += run_threads(threads, stop, config.duration, config.hang_s)
            result.healthy_at_end = _healthy(server)
            if server.watchdog is not None:
                result.recoveries = list(server.watchdog.events)
    return result


# --- the record -------------------------------------------------------------------------


def _fault_table(faults: list[dict]) -> list[dict]:
    kinds: dict[str, list[dict]] = collections.defaultdict(list)
    for fault in faults:
        kinds[fault["kind"]].append(fault)
    rows = []
    for kind, group in sorted(kinds.items()):
        not_ready = [f["not_ready_s"] for f in group if f["not_ready_s"] is not None]
        serving = [f["serving_s"] for f in group if f["serving_s"] is not None]
        rows.append({"kind": kind, "count": len(group), "as_required": sum(f["ok"] for f in group),
                     "max_not_ready_s": max(not_ready, default=None),
                     "max_serving_s": max(serving, default=None)})
    return rows


def soak_record(config: SoakConfig, result: SoakResult, provenance: dict) -> dict:
    """The JSON record; `provenance`: the run's `Provenance.block()`."""
    return {"schema": "cinema-trt/soak/1", **provenance,
            "settings": {**settings_json(config), "request": REQUEST, "hang_s": config.hang_s},
            "counts": result.counts, "longest_call_s": round(result.longest_call_s, 2),
            "errors": dict(result.errors.most_common()),
            "faults": _fault_table(result.faults),
            "watchdog_reloads": [{"model": m, "seconds": round(s, 2)}
                                 for m, s in result.recoveries],
            "healthy_at_end": result.healthy_at_end}


def _cell(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = [f"Soak of {record['duration_s']:.0f} s on {describe_machine(record['machine'])}, "
             f"tritonserver from nvidia-pytriton {record['versions']['nvidia-pytriton']}, "
             f"{describe_source(record['source'])}, {record['started']}: {s['clients']} clients "
             f"(tiny preset, {s['request']['frames']} frames {s['request']['height']}x"
             f"{s['request']['width']}, {s['request']['steps']} steps), a fault every "
             f"~{s['fault_every']:.0f} s, no-progress bound {s['progress_timeout']:.0f} s.",
             "", "| requests | count |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {count} |"
              for name, count in record["counts"].items()]
    lines += [f"| server healthy at the end | {'yes' if record['healthy_at_end'] else 'NO'} |",
              "", "| fault | count | answered as required | max s to not-ready | "
              "max s to serving |", "|---|---|---|---|---|"]
    lines += [f"| {f['kind']} | {f['count']} | {f['as_required']} | "
              f"{_cell(f['max_not_ready_s'])} | {_cell(f['max_serving_s'])} |"
              for f in record["faults"]]
    if record["errors"]:
        lines += ["", "| client error (clear) | count |", "|---|---|"]
        lines += [f"| {kind} | {count} |" for kind, count in record["errors"].items()]
    return "\n".join(lines) + "\n"


def harness_config(cls: type[T], doc: str, argv: list[str] | None,
                   hidden: tuple[str, ...] = ()) -> tuple[T, Path]:
    """A fault harness's command line, parsed with logging set up: a --flag per number
    field of the config dataclass `cls` (default: the field's; `hidden` ones keep theirs),
    --repository and --out. Returns (config, out)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for f in fields:
        if f.name not in hidden and type(f.default) in (int, float):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                                default=f.default)
    parser.add_argument("--repository", type=Path, help="default: tiny, random weights")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    given = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    return cls(**given), args.out


def publish(record: dict, out: Path, name: str, text: str, run: Provenance) -> None:
    """Write a harness's record and its Markdown (`text`) to `out`, and print them."""
    stem = write_record(record, out, name, text, run)
    print(text)
    print(f"wrote {stem}.json and {stem}.md")


def main(argv: list[str] | None = None) -> int:
    config, out = harness_config(SoakConfig, __doc__, argv)
    run = Provenance.start()
    record = soak_record(config, run_soak(config), run.block())
    publish(record, out, "soak", markdown(record), run)
    good = record["counts"]["hung"] == 0 and record["counts"]["lost"] == 0
    return 0 if good and record["healthy_at_end"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
