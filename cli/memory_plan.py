"""`cinema-trt memory-plan`: the paper-scale memory plan (TensorRT-RTX builds, no GPU)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(subparsers) -> None:
    from cinema_trt.benchmarks.config import RESULTS_DIR
    from cinema_trt.benchmarks.memory_run import PLANS, MemoryPlanConfig
    from cinema_trt.models.backends import minimum_targets

    default = MemoryPlanConfig()
    p = subparsers.add_parser(
        "memory-plan", help="device memory of every stage at paper scale, and the pipeline's "
                            "peak against 24/48/80 GiB cards (builds on a CPU)",
        description="Exports the preset at full width with few layers, builds each stage "
                    "with TensorRT-RTX for the preset's request (CFG batch 2, up to --refs "
                    "references), reads the builder's weights and activation memory, "
                    "extrapolates to full depth, and writes "
                    "<machine>-memory-<preset>-<date>.json/.md/.png. Needs tensorrt-rtx-cu12; "
                    "the cinema preset took ~20 min and 12 GiB of RAM on 2 CPU cores.")
    p.add_argument("--preset", default=default.preset, help="cinema | small | tiny")
    p.add_argument("--depths", type=lambda t: tuple(int(x) for x in _names(t)),
                   default=default.depths,
                   help="the two depths the DiT, MLLM text and vision stacks are built at "
                        "(default %(default)s)")
    p.add_argument("--plans", type=_names, default=default.plans,
                   help=f"comma-separated, from {','.join(PLANS)} (default: all)")
    p.add_argument("--targets", type=_names, default=default.targets,
                   help=f"TensorRT-RTX targets (default {','.join(default.targets)}: "
                        f"{minimum_targets()})")
    p.add_argument("--refs", type=int, default=default.refs,
                   help="reference images per request, the profile's max (default %(default)s)")
    p.add_argument("--workspace-gib", type=float, default=default.workspace_gib,
                   help="the builder's workspace limit (default %(default)s: the largest "
                        "card; a stage needing more fails to build)")
    p.add_argument("--cache-dir", type=Path, default=default.cache_dir,
                   help="exports and engines, reused by later runs (default %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="results folder (default: benchmarks/results of this checkout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinema_trt.benchmarks.memory_report import run_memory_plan, to_markdown, write_outputs
    from cinema_trt.benchmarks.memory_run import MemoryPlanConfig

    settings = MemoryPlanConfig(preset=args.preset, depths=args.depths, plans=args.plans,
                                targets=args.targets,
                                refs=args.refs, cache_dir=args.cache_dir,
                                workspace_gib=args.workspace_gib)
    record = run_memory_plan(settings)
    files = write_outputs(record, args.out)
    print(to_markdown(record))
    print("wrote " + "\n      ".join(str(f) for f in files.values()))
    return 0
