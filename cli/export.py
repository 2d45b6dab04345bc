"""`cinema-trt export`: stages -> ONNX graphs + manifests, checked against PyTorch."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cinema_trt.models.precision import EXPORT_PRECISIONS, WEIGHT_FORMATS
from cinema_trt.models.stages import FP8_GRAPHS, GRAPH_NAMES, WEIGHT_ONLY_GRAPHS, aliases
from cinema_trt.models.text_table import text_table

from .options import defaults, from_args

if TYPE_CHECKING:
    from cinema_trt.export.driver import ExportResult

log = logging.getLogger(__name__)

# cinema_trt.export.calibration.CALIBRATORS and export.weight_only.METHODS, spelled out:
# importing them would load torch every time the CLI starts (tests/export/test_export_cli.py
# checks they agree)
CALIBRATORS = ("builtin", "modelopt")
WEIGHT_ONLY_METHODS = ("rtn_dq", "awq_clip", "awq_lite")


@dataclass(frozen=True)
class ExportOptions:
    out: Path
    preset: str | None = None  # None: the weights folder's own config, else DEFAULT_PRESET
    weights: Path | None = None
    stages: tuple[str, ...] | None = None
    fp8: bool = False
    progress: bool = True
    calibrator: str = "builtin"  # FP8 calibration: builtin | modelopt
    attention_plugin: bool = False  # DiT attention as TensorRT plugin nodes
    dtype: str = "fp32"  # what the graphs compute in: fp32 | fp16 | bf16
    weight_only: str | None = None  # int4 | int8 weights for the graphs with that recipe
    # RTN by default: AWQ-clip took 9-100x RTN's time for at most 0.0005 of cosine in the
    # weight-only record (benchmarks/results/cpu-2core-weight-only-20261206.md)
    weight_only_method: str = "rtn_dq"
    weight_only_block: int = 0  # INT4 input rows per scale; 0: the largest up to 128 that fits


def export_from_options(options: ExportOptions) -> list[ExportResult]:
    """Validate the options, export, and return the results (a list of ExportResult)."""
    from cinema_trt.export.driver import export_stages
    from cinema_trt.models.factory import command_config

    given = dataclasses.asdict(options)  # export_stages takes the other fields by name
    return export_stages(command_config(given.pop("preset"), options.weights), given.pop("out"),
                         **given)


def _aliases() -> str:
    return "; ".join(f"{name} = {' + '.join(graphs)}" for name, graphs in aliases().items())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cinema_trt.export.manifest import MANIFEST_FILE, MODEL_FILE

    p = subparsers.add_parser(
        "export", help=f"export stages to ONNX (+ {MANIFEST_FILE}), checked against PyTorch",
        description=f"Writes <out>/<stage>/{MODEL_FILE} and {MANIFEST_FILE} for each graph: "
                    f"{', '.join(GRAPH_NAMES)} (a split stage's name stands for its graphs: "
                    f"{_aliases()}).")
    p.add_argument("--preset", help="tiny | small | cinema (default: the --weights folder's "
                                    "own architecture, else tiny); with --weights, must match")
    p.add_argument("--weights", type=Path,
                   help="weights folder from save_models, its cinema_config.json the "
                        "architecture (default: the preset's seeded weights)")
    p.add_argument("--out", type=Path, required=True, help="export folder")
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="default: every stage")
    p.add_argument("--dtype", choices=[d.value for d in EXPORT_PRECISIONS],
                   help="what the graphs compute in (their inputs and outputs stay float32). "
                        "fp16/bf16 graphs build strongly typed, the only kind TensorRT 11 "
                        "builds: use them for --precision fp16/bf16, and with --fp8 for "
                        "fp16/bf16 outside the FP8 layers")
    p.add_argument("--fp8", action="store_true",
                   help=f"FP8 Q/DQ for {', '.join(FP8_GRAPHS)}, calibrated on pipeline runs")
    p.add_argument("--calibrator", choices=CALIBRATORS,
                   help="FP8 calibration (with --fp8): builtin hooks, or NVIDIA ModelOpt's "
                        "mtq.quantize with the same recipe (pip install 'cinema-trt[quant]'); "
                        "both are max calibration over the same pipeline runs")
    p.add_argument("--attention-plugin", action="store_true",
                   help="DiT attention as Triton-kernel TensorRT plugin nodes (TensorRT only; "
                        "the plugin takes fp16/bf16: use --dtype fp16 or bf16, or on "
                        "TensorRT 10 build an fp32 export with --precision fp16)")
    p.add_argument("--weight-only", choices=[f.name for f in WEIGHT_FORMATS],
                   help=f"integer weights for {', '.join(WEIGHT_ONLY_GRAPHS)} through NVIDIA "
                        "ModelOpt's ONNX quantizer (pip install 'cinema-trt[quant]'): "
                        + "; ".join(f"{f.name}: one scale per {f.scales} ({f.why})"
                                    for f in WEIGHT_FORMATS)
                        + ". The graph keeps --dtype (use fp16) for its arithmetic and is not "
                          "FP8 with --fp8; build it with --precision of that dtype")
    p.add_argument("--weight-only-method", choices=WEIGHT_ONLY_METHODS,
                   help="ModelOpt's method: rtn_dq rounds each block (default); awq_clip "
                        "also searches each block's clipping on calibration prompts (~10x "
                        "slower); awq_lite, AWQ's per-channel scaling")
    p.add_argument("--weight-only-block", type=int, metavar="ROWS",
                   help="int4: input rows per scale, a power of two >= 16 dividing every "
                        "layer's input width (default: the largest up to 128 that does)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, **defaults(ExportOptions))


def run(args: argparse.Namespace) -> int:
    from cinema_trt.export.calibration import ModelOptMissingError
    options = from_args(ExportOptions, args, progress=not args.quiet,
                        stages=tuple(args.stages) if args.stages else None)
    try:
        results = export_from_options(options)
    except ModelOptMissingError as error:
        log.error("%s", error)
        return 2
    print(format_summary(results))
    log.info("exported %d stage(s) to %s", len(results), options.out)
    return 0


def format_summary(results: list[ExportResult]) -> str:
    """A plain-text table: stage, precision, file size, params, errors vs torch, time."""
    rows = [("stage", "precision", "size", "params", "max_abs", "rel_max", "cosine", "time")]
    for r in results:
        errors = ((f"{r.error.max_abs:.2e}", f"{r.error.rel_max:.2e}", f"{r.error.cosine:.6f}")
                  if r.error is not None else ("-", "-", "-"))
        precision = r.precision.value + (f", {r.weight_only} weights" if r.weight_only else "")
        rows.append((r.stage, precision, f"{r.file_bytes / 2**20:.2f} MiB",
                     f"{r.params / 1e6:.3f} M", *errors, f"{r.seconds:.1f} s"))
    return text_table(rows)
