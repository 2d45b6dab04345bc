"""Scale-out sweep: 1..N Triton replicas, each on its own test host, behind HAProxy
(serving/replicas.py), against 1..C concurrent gRPC clients (the unchanged `CinemaClient`
with streamed progress). Per setting: requests, throughput and p50/p95 latency, and the
throughput as a ratio to one replica at the same concurrency.

    cinema-trt bench-replicas --replicas 3 --concurrency 1,2,4     # root (network namespaces)

The numbers belong to the machine: on a 2-core CPU every replica competes for the same two
cores, so more replicas cannot be faster there; the record says so by its ratios. On GPUs,
one replica per GPU is what scales.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .machine import Provenance, describe_machine, describe_source, machine_tag, settings_json
from .stats import percentile

LOG = logging.getLogger(__name__)
# the tiny preset's default frames and size, 8 steps: the generation, not the per-request
# overhead (prompt processing, the stream), dominates a request's time
REQUEST: dict[str, Any] = dict(frames=5, height=64, width=64, steps=8, guidance=4.0)


@dataclass(frozen=True)
class SweepConfig:
    replicas: tuple[int, ...] = (1, 2, 3)
    concurrency: tuple[int, ...] = (1, 2, 4)
    requests: int = 24  # per setting, spread over the clients
    warmup: int = 1  # untimed requests per replica after each start
    torch_threads: int = 1  # per stage model: N replicas x 5 stages share the cores
    repository: Path | None = None  # None: the tiny preset, random weights of seed 0

    def __post_init__(self):
        if not self.replicas or min(self.replicas) < 1 or not self.concurrency \
                or min(self.concurrency) < 1 or self.requests < 1:
            raise ValueError(f"{self}: replicas, concurrency and requests must be >= 1")


@dataclass
class Setting:
    replicas: int
    concurrency: int
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    routed: dict[str, int] = field(default_factory=dict)  # requests each replica ran

    def to_dict(self) -> dict:
        ordered = sorted(self.latencies_s)
        return {"replicas": self.replicas, "concurrency": self.concurrency,
                "requests": len(ordered), "wall_s": round(self.wall_s, 3),
                "throughput_rps": round(len(ordered) / self.wall_s, 4),
                "p50_s": round(percentile(ordered, 50), 4),
                "p95_s": round(percentile(ordered, 95), 4), "routed": self.routed,
                "latencies_s": [round(x, 4) for x in self.latencies_s]}


def tiny_repository(workdir: Path, torch_threads: int) -> Path:
    """The tiny preset's repository (random weights of seed 0), PyTorch stages."""
    from cinema_trt.models.factory import build_models, save_models
    from cinema_trt.models.presets import get_preset
    from cinema_trt.serving.repo import RepositoryOptions, build_repository

    weights = save_models(build_models(get_preset("tiny"), seed=0), workdir / "weights")
    return build_repository(None, workdir / "models", weights,
                            options=RepositoryOptions(torch_threads=torch_threads))


def _load(url: str, setting: Setting, requests: int, seed0: int) -> None:
    """`setting.concurrency` clients send `requests` in all, back to back; each latency is
    one whole streamed generation."""
    from cinema_trt.models.media import sample_references
    from cinema_trt.serving.client import CinemaClient, ClientOptions

    refs = [str(sample_references()[0])]
    client = CinemaClient(url, ClientOptions(timeout=300))
    lock, counter, errors = threading.Lock(), iter(range(requests)), []

    def worker() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            begin = time.monotonic()
            try:
                result = client.stream("a toy", refs, seed=seed0 + n, **REQUEST)
            except Exception as error:  # recorded: the sweep measures healthy replicas
                errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                setting.latencies_s.append(time.monotonic() - begin)
                replica = result.replica or "?"  # the replica names itself in the stream
                setting.routed[replica] = setting.routed.get(replica, 0) + 1

    threads = [threading.Thread(target=worker, name=f"sweep-client-{i}")
               for i in range(setting.concurrency)]
    begin = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    setting.wall_s = time.monotonic() - begin
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed on healthy replicas: {errors[:3]}")


def run_sweep(config: SweepConfig) -> list[Setting]:
    from cinema_trt.serving.replicas import ReplicaSet, ReplicaSetConfig

    settings = []
    with tempfile.TemporaryDirectory(prefix="cinema-sweep-") as workdir:
        repo = config.repository or tiny_repository(Path(workdir), config.torch_threads)
        for count in config.replicas:
            with ReplicaSet(ReplicaSetConfig(repo, replicas=count)) as replicas:
                _load(replicas.url, Setting(count, count), config.warmup * count, 10_000)
                for concurrency in config.concurrency:
                    setting = Setting(count, concurrency)
                    _load(replicas.url, setting, config.requests, 1000 * concurrency)
                    LOG.info("%d replicas x %d clients: %.3f requests/s", count, concurrency,
                             len(setting.latencies_s) / setting.wall_s)
                    settings.append(setting)
    return settings


def sweep_record(config: SweepConfig, settings: list[Setting], provenance: dict) -> dict:
    rows = [s.to_dict() for s in settings]
    base = {r["concurrency"]: r["throughput_rps"] for r in rows if r["replicas"] == 1}
    for row in rows:  # the ratio this machine shows, not an absolute speed claim
        one = base.get(row["concurrency"])
        row["throughput_vs_1_replica"] = round(row["throughput_rps"] / one, 3) if one else None
    return {"schema": "cinema-trt/replica-sweep/1", **provenance,
            "settings": {**settings_json(config), "request": REQUEST, "balancer": "haproxy"},
            "results": rows}


def markdown(record: dict) -> str:
    s = record["settings"]
    lines = [f"Replica sweep on {describe_machine(record['machine'])}, "
             f"{describe_source(record['source'])}, {record['started']}: tiny preset "
             f"({s['request']['frames']} frames {s['request']['height']}x"
             f"{s['request']['width']}, {s['request']['steps']} steps), "
             f"{s['requests']} requests per setting through HAProxy, each replica "
             "`cinema-trt serve` on its own network-namespace host.", "",
             "| replicas | clients | requests/s | vs 1 replica | p50 s | p95 s | requests per "
             "replica |", "|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        routed = ", ".join(f"{k} {v}" for k, v in sorted(r["routed"].items()))
        lines.append(f"| {r['replicas']} | {r['concurrency']} | {r['throughput_rps']:.2f} | "
                     f"{r['throughput_vs_1_replica']:.2f} | {r['p50_s']:.2f} | "
                     f"{r['p95_s']:.2f} | {routed} |")
    return "\n".join(lines) + "\n"


def write_record(record: dict, out: Path, name: str, text: str, run: Provenance) -> Path:
    """`<out>/<name>-<machine>-<date>.json` and `.md` (`text`); returns the path stem."""
    stem = out / f"{name}-{machine_tag('cpu')}-{run.date}"
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    stem.with_suffix(".md").write_text(text)
    return stem


def sweep(config: SweepConfig, out: Path) -> tuple[dict, Path]:
    """Run the sweep and write its record to `out`; (record, path stem)."""
    run = Provenance.start()
    settings = run_sweep(config)
    record = sweep_record(config, settings, run.block())
    return record, write_record(record, out, "replicas", markdown(record), run)
