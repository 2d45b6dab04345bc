"""`cinema-trt compare`: one export's (or engine's) outputs against another's, polygraphy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="accuracy of one export or engine folder against another (polygraphy)",
        description="Runs every stage both folders hold through polygraphy's Comparator on "
                    "the inputs the exports were validated on, and judges the difference by "
                    "the tolerance their manifests imply (fp16: the exports' max-abs gates "
                    "vs torch fp32 added; FP8: their angles to torch fp32 added). REFERENCE "
                    "is an export folder run in ONNX Runtime; OTHER is an export folder, or "
                    "an engine folder on a GPU (TensorRT). Exits 1 when a stage fails.")
    p.add_argument("reference", type=Path, help="export folder (or one stage's folder)")
    p.add_argument("other", type=Path, help="export or engine folder (or one stage's folder)")
    p.add_argument("--stages", nargs="+", default=(), metavar="STAGE",
                   help="stages to compare (default: every stage in both folders)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinema_trt.engines.accuracy import compare_folders, format_comparisons

    results = compare_folders(args.reference, args.other, tuple(args.stages),
                              quiet=not args.verbose)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_comparisons(results))
    return 0 if all(r.passed for r in results) else 1
