"""`cinema-trt memory-plan`: the paper-scale memory plan (TensorRT-RTX builds, no GPU), and
the plan of the deployment as served (benchmarks/memory_served*.py), which `--from-record`
re-plans from recorded builder figures without building."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .options import from_args, names

if TYPE_CHECKING:
    from cinema_trt.serving.served_memory import Assumptions

log = logging.getLogger(__name__)


def add_cuda_context(group) -> None:
    """`--cuda-context-gib`: the served plans' one assumption a user may know better (the
    memory plan and `repo --memory-budget` both take it)."""
    from cinema_trt.serving.served_memory import CUDA_CONTEXT_GIB

    group.add_argument("--cuda-context-gib", type=float, default=CUDA_CONTEXT_GIB,
                       help="device memory each process's CUDA context takes (an "
                            "assumption; default %(default)s)")


def assumptions(args: argparse.Namespace, instances: int) -> Assumptions:
    """The served plan's assumptions from the parsed flags."""
    from cinema_trt.serving.served_memory import GIB, Assumptions

    return Assumptions(cuda_context=int(args.cuda_context_gib * GIB), instances=instances)


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
    p.add_argument("--depths", type=lambda t: tuple(int(x) for x in names(t)),
                   default=default.depths,
                   help="the two depths the DiT, MLLM text and vision stacks are built at "
                        "(default %(default)s)")
    p.add_argument("--plans", type=names, default=default.plans,
                   help=f"comma-separated, from {','.join(PLANS)} (default: all)")
    p.add_argument("--targets", type=names, default=default.targets,
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
    served = p.add_argument_group(
        "the plan as served", "per Triton model process (and the shared layout) against "
                              "16/24/32/48/80 GiB cards, from the builder's figures")
    served.add_argument("--from-record", type=Path, metavar="JSON",
                        help="re-plan from this memory record (*-memory-<preset>-*.json) "
                             "instead of building: no export, no build")
    served.add_argument("--chunks-record", type=Path, metavar="JSON",
                        help="the VAE chunks record (default: the newest *-vae-chunks-*.json "
                             "beside the memory record)")
    served.add_argument("--weight-only-record", type=Path, metavar="JSON",
                        help="the weight-only MLLM record (default: the newest "
                             "*-weight-only-*.json beside the memory record)")
    add_cuda_context(served)
    served.add_argument("--instances", type=int, default=1,
                        help="instances of each Triton model (default %(default)s)")
    p.set_defaults(func=run)


def served_plan(args: argparse.Namespace, memory_record: Path) -> dict[str, Path]:
    """Re-plan the deployment as served from `memory_record` and the chunk and weight-only
    records; write its record to --out."""
    from cinema_trt.benchmarks.config import RESULTS_DIR
    from cinema_trt.benchmarks.machine import Provenance
    from cinema_trt.benchmarks.memory_served import latest, read_records
    from cinema_trt.benchmarks.memory_served_report import make_record, write_outputs

    start = Provenance.start()
    def beside(kind: str) -> Path:
        """The newest record of `kind` beside the memory record, else in the checkout's."""
        try:
            return latest(Path(memory_record).parent, kind)
        except FileNotFoundError:
            return latest(RESULTS_DIR, kind)

    records = read_records(memory_record, args.chunks_record or beside("vae-chunks"),
                           args.weight_only_record or beside("weight-only"))
    record = make_record(records, start.block(), assumptions(args, args.instances))
    return write_outputs(record, args.out)


def run(args: argparse.Namespace) -> int:
    from cinema_trt.benchmarks.memory_report import run_memory_plan, to_markdown, write_outputs
    from cinema_trt.benchmarks.memory_run import MemoryPlanConfig

    written: dict[str, Path] = {}
    source = args.from_record
    if source is None:
        record = run_memory_plan(from_args(MemoryPlanConfig, args))
        written = write_outputs(record, args.out)
        print(to_markdown(record))
        try:  # the served plan needs chunk and weight-only records of the same model
            served = served_plan(args, written["json"])
        except (FileNotFoundError, ValueError) as error:
            log.warning("no served plan from this record: %s", error)
            print("wrote " + "\n      ".join(str(f) for f in written.values()))
            return 0
    else:
        served = served_plan(args, source)
    print(served["markdown"].read_text())
    print("wrote " + "\n      ".join(str(f) for f in [*written.values(), *served.values()]))
    return 0
