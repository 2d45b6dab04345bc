"""`cinema-trt bench-replicas`: throughput and p50/p95 of 1..N replicas behind HAProxy."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import defaults, from_args


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated counts, e.g. "
                                         "1,2,4") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cinema_trt.benchmarks.config import RESULTS_DIR
    from cinema_trt.benchmarks.replicas import SweepConfig

    p = subparsers.add_parser(
        "bench-replicas", help="throughput and latency of 1..N replicas behind a balancer "
                               "(root: each replica on a network-namespace host)",
        description="Starts 1, then 2, ... replicas (`cinema-trt serve` on test hosts of "
                    "this machine) behind HAProxy and times concurrent streamed requests "
                    "through it. Writes replicas-<machine>-<date>.json/.md.")
    p.add_argument("--replicas", type=lambda t: tuple(range(1, int(t) + 1)),
                   help="sweep 1..N replicas (default 3)")
    p.add_argument("--concurrency", type=_counts, help="client counts (default 1,2,4)")
    p.add_argument("--requests", type=int, help="requests per setting (default %(default)s)")
    p.add_argument("--repository", type=Path, help="default: the tiny preset, random weights")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    p.set_defaults(func=run, **defaults(SweepConfig))


def run(args: argparse.Namespace) -> int:
    from cinema_trt.benchmarks.replicas import SweepConfig, markdown, sweep

    record, stem = sweep(from_args(SweepConfig, args), args.out)
    print(markdown(record))
    print(f"wrote {stem}.json and {stem}.md")
    return 0
