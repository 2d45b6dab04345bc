"""`cinema-trt demo`: weights -> ONNX -> [TensorRT] -> Triton -> one served video, timed.

Artifacts go to --workdir and are reused on the next run when nothing that produced them
changed (see serving/demo.py); the server is always stopped, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .options import defaults, from_args

if TYPE_CHECKING:
    from cinema_trt.serving.demo import DemoResult

log = logging.getLogger(__name__)


def print_report(result: DemoResult) -> None:
    from cinema_trt.serving.latency import format_latency_table

    reused = ", ".join(f"{step} {'reused' if hit else 'built'}"
                       for step, hit in result.artifacts.reused.items())
    # stdout, not the log: this is the demo's output
    print(f"runtime: {result.artifacts.runtime}   steps: {reused}", flush=True)
    print(format_latency_table(result.latency, result.request_seconds), flush=True)
    print(f"video: {result.output}", flush=True)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cinema_trt.serving.demo import RUNTIME_CHOICES, DemoOptions

    p = subparsers.add_parser(
        "demo", help="export, serve with Triton and generate one video, end to end",
        description="Saves random preset weights (or takes --weights), exports every "
                    "stage to ONNX, builds TensorRT engines when TensorRT and CUDA are "
                    "present (else ONNX Runtime on the CPU serves the graphs), writes a "
                    "Triton model repository, starts the server on free loopback ports, "
                    "generates a video from the bundled sample references over gRPC and "
                    "prints per-stage latency.")
    p.add_argument("--workdir", type=Path,
                   help="artifacts folder, reused between runs (default: ./cinema-demo)")
    p.add_argument("--preset", help="tiny | small | cinema (default: the --weights folder's "
                                    "own architecture, else tiny); with --weights, must match")
    p.add_argument("--weights", type=Path,
                   help="weights folder from save_models, its cinema_config.json the "
                        "architecture (default: random preset weights, seed 0)")
    p.add_argument("-o", "--output", type=Path, help="the MP4 (default: WORKDIR/demo.mp4)")
    p.add_argument("--prompt")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    p.add_argument("--frames", type=int, help="1 + 4k (default: the preset's)")
    p.add_argument("--height", type=int, help="multiple of 16 (default: the preset's)")
    p.add_argument("--width", type=int, help="multiple of 16 (default: the preset's)")
    p.add_argument("--seed", type=int, help="noise seed of the request")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES,
                   help="auto: TensorRT when usable, else ONNX Runtime on the CPU")
    p.add_argument("--startup-timeout", type=float,
                   help="seconds for the server to load every stage")
    p.add_argument("--keep-server", action="store_true",
                   help="after generating, keep serving until Ctrl-C")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, **defaults(DemoOptions))


def run(args: argparse.Namespace) -> int:
    from cinema_trt.serving.demo import DemoOptions, run_demo
    from cinema_trt.serving.server import ServerError

    options = from_args(DemoOptions, args, progress=not args.quiet)
    try:
        run_demo(options, report=print_report)
    except KeyboardInterrupt:
        log.info("interrupted; the server was stopped")
        return 130
    except ServerError as error:
        log.error("%s", error)
        return 1
    return 0
