"""`cinema-trt repo`: write a Triton model repository (stage models + `cinema` orchestrator,
or with --layout shared the `cinema` model alone, running every stage in its process)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cinema_trt.models.backends import RUNTIMES
from cinema_trt.serving.served_memory import LAYOUTS

from .decoding import add_decoding, decoding
from .memory_plan import add_cuda_context, assumptions
from .options import defaults, from_args

log = logging.getLogger(__name__)


def random_weights(preset: str, seed: int, folder: Path) -> Path:
    """Save deterministic random weights of `preset` (hubs are unreachable) to `folder`."""
    from cinema_trt.models.factory import build_models, save_models
    from cinema_trt.models.presets import get_preset

    log.info("no --weights: saving random %s weights (seed %d) to %s", preset, seed, folder)
    return save_models(build_models(get_preset(preset), seed=seed), folder)


def write_repository(args: argparse.Namespace) -> Path:
    from cinema_trt.models.factory import command_config
    from cinema_trt.models.presets import DEFAULT_PRESET
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.repo_memory import MemoryRequest
    from cinema_trt.serving.triton_config import Placement

    placement = Placement.on(args.gpus, args.instances)
    memory = MemoryRequest(args.memory_budget, args.weight_streaming_budget,
                           assumptions(args, placement.count))
    options = from_args(RepositoryOptions, args, stage_placement=placement, memory=memory,
                        decoding=decoding(args))
    weights = args.weights or random_weights(args.preset or DEFAULT_PRESET, args.seed,
                                             args.output.with_name(args.output.name + "-weights"))
    return build_repository(command_config(args.preset, weights), args.output, weights,
                            args.artifacts, options, export_dir=args.onnx)


def _gpu_list(text: str) -> tuple[int, ...]:
    """`--gpus 0,1` -> (0, 1); Placement checks the indices themselves."""
    try:
        gpus = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus={text!r} must be a comma-separated list "
                                         "of GPU indices, e.g. 0,1") from None
    if not gpus:
        # an empty list would silently mean the CPU
        raise argparse.ArgumentTypeError(f"--gpus={text!r} names no GPU; give indices, e.g. "
                                         "0,1, or leave out --gpus to run on the CPU")
    return gpus


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cinema_trt.serving.repo import RepositoryOptions

    p = subparsers.add_parser("repo", help="write a Triton model repository")
    p.add_argument("-o", "--output", type=Path, required=True, help="repository folder")
    p.add_argument("--weights", type=Path,
                   help="weights folder from save_models; default: random --preset weights "
                        "saved beside the repository")
    p.add_argument("--preset", help="architecture to check the weights against (default: "
                                    "the weights' own; tiny without --weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--backend", choices=("python", "onnxruntime", "tensorrt"),
                   help="stage models: python (PyTorch), onnxruntime (ONNX), tensorrt (plans)")
    p.add_argument("--runtime", choices=RUNTIMES,
                   help="what runs each python-backend stage: torch (weights), ort (the "
                        "exported graphs in --artifacts, on ONNX Runtime), tensorrt (the "
                        "engines in --artifacts; needs --gpus and --onnx)")
    p.add_argument("--artifacts", type=Path,
                   help="export/build output with <stage>/model.onnx or <stage>/*.plan")
    p.add_argument("--onnx", type=Path,
                   help="runtime tensorrt: the export folder (glue between the MLLM engines)")
    p.add_argument("--layout", choices=LAYOUTS,
                   help="per-stage: one Triton model per stage, called by the cinema model "
                        "(default); shared: no stage models, the cinema model runs every "
                        "stage in its process (one CUDA context, one TensorRT activation "
                        "region: less memory). Default with --memory-budget: per-stage if "
                        "it fits, else shared")
    p.add_argument("--gpus", type=_gpu_list, default=(),
                   help="comma-separated GPU indices for the stage models, or the shared "
                        "layout's cinema model (default: CPU)")
    p.add_argument("--instances", type=int, default=1,
                   help="instances per stage model (shared: of the cinema model)")
    p.add_argument("--version", type=int, help="model version folder")
    p.add_argument("--max-concurrency", type=int,
                   help="requests the orchestrator runs at once")
    p.add_argument("--torch-threads", type=int,
                   help="torch threads per python stage model (0: torch default)")
    p.add_argument("--copy-weights", action="store_true",
                   help="copy weights and artifacts instead of symlinking them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing repository")
    memory = p.add_argument_group(
        "memory", "runtime tensorrt: price the engines in --artifacts as served in each "
                  "layout (per-stage: one process per stage model instance; shared: one "
                  "process), from the builder figures in their manifests")
    memory.add_argument("--memory-budget", type=_size, metavar="SIZE",
                        help="device memory per GPU, e.g. 24GiB: the first layout the "
                             "engines fit (per-stage, then shared; or --layout's), setting "
                             "the budget of a DiT built with --weight-streaming if that makes "
                             "them fit; else refuse with both layouts' table")
    memory.add_argument("--weight-streaming-budget", type=_size, metavar="SIZE",
                        help="weights the DiT keeps on the GPU, e.g. 6GiB (an engine built "
                             "with --weight-streaming; TensorRT streams the rest per call)")
    add_cuda_context(memory)
    add_decoding(p)
    p.set_defaults(func=run, **defaults(RepositoryOptions))


def _size(text: str) -> int:
    from cinema_trt.serving.served_memory import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from cinema_trt.serving.repo_memory import MemoryBudgetError

    try:
        print(write_repository(args))
    except MemoryBudgetError as error:
        log.error("%s\n\n%s", error, recorded_plan())
        return 2
    return 0


def recorded_plan() -> str:
    """What would fit on which card at paper scale: the newest served-plan record."""
    from cinema_trt.benchmarks.config import RESULTS_DIR
    from cinema_trt.benchmarks.memory_served import latest
    from cinema_trt.benchmarks.memory_served_report import choice_rows

    try:
        path = latest(RESULTS_DIR, "memory-served-cinema")
    except FileNotFoundError:
        return "(no served memory plan recorded; cinema-trt memory-plan --from-record ...)"
    import json

    record = json.loads(path.read_text())
    return "\n".join([f"At paper scale ({path.name}), the plan each card runs:", "",
                      *choice_rows(record), "", *(f"- {n}" for n in record["served"])])
