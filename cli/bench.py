"""`cinema-trt bench`: per-stage and whole-request latency, runtimes side by side."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import defaults, from_args, names

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cinema_trt.benchmarks.config import PRECISIONS, RESULTS_DIR, RUNTIMES, BenchConfig

    p = subparsers.add_parser(
        "bench", help="latency of every stage and the whole request, per runtime",
        description="Captures the stage inputs of one request (the preset's defaults), "
                    "then times each stage and the whole pipeline on every runtime and "
                    "precision available here. Writes <machine>-<preset>-<date>.json/.md/.png.")
    p.add_argument("--preset", help="tiny | small | cinema (default: the --weights folder's "
                                    "own architecture, else small); with --weights, must match")
    p.add_argument("--weights", type=Path,
                   help="weights folder from save_models, its cinema_config.json the "
                        "architecture (default: the preset's seeded weights)")
    p.add_argument("--runtimes", type=names,
                   help=f"comma-separated, from {','.join(RUNTIMES)} (default: all; "
                        "unavailable ones are skipped with a note)")
    p.add_argument("--precisions", type=names,
                   help=f"comma-separated, from {','.join(PRECISIONS)} (default: all)")
    p.add_argument("--runs", type=int,
                   help="timed runs per measurement (default %(default)s)")
    p.add_argument("--warmup", type=int,
                   help="untimed runs before each measurement (default %(default)s)")
    p.add_argument("--served", action="store_true",
                   help="also time the request through a local Triton server")
    p.add_argument("--device", help="cpu | cuda[:N] (default: cuda if present)")
    p.add_argument("--refs", type=int,
                   help="bundled reference images in the request (default %(default)s)")
    p.add_argument("--prompt")
    p.add_argument("--seed", type=int, help="noise seed of the request")
    p.add_argument("--threads", type=int,
                   help="intra-op threads for torch, ONNX Runtime and served stages "
                        "(default 0: each library's default, one per core)")
    p.add_argument("--interleave", action="store_true",
                   help="time the variants round-robin (all loaded at once): fairer on a "
                        "busy machine, more memory")
    p.add_argument("--cache-dir", type=Path,
                   help="the artifact cache of ONNX exports and engines, <dir>/<kind>/<key>/ "
                        "(default: ~/.cache/cinema-trt/bench)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="results folder (default: benchmarks/results of this checkout)")
    p.set_defaults(func=run, **defaults(BenchConfig))


def run(args: argparse.Namespace) -> int:
    from cinema_trt.benchmarks.config import BenchConfig
    from cinema_trt.benchmarks.latency import run_benchmark
    from cinema_trt.benchmarks.report import to_markdown, write_outputs

    result = run_benchmark(from_args(BenchConfig, args))
    files = write_outputs(result, args.out)
    print(to_markdown(result))
    print(f"wrote {files['json']}\n      {files['markdown']}\n      {files['chart']}")
    return 0
