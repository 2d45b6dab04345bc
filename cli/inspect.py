"""`cinema-trt inspect`: what an export or engine folder holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="I/O, precision, op counts or engine layers of an export or engine",
        description="PATH is an export folder, one stage's folder, a model.onnx, or an engine "
                    "folder. Graphs: inputs/outputs (dtypes, dynamic dims), precision, op "
                    "counts with attention blocks and Q/DQ nodes. Engines: backend, version, "
                    "targets, precision, bindings and the builder's layer summary.")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinema_trt.engines.inspect import format_reports, inspect_path

    reports = inspect_path(args.path)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
    else:
        print(format_reports(reports))
    return 0
