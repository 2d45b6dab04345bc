"""`cinema-trt` entry point: collects one subcommand per module of this package.

Each subcommand module has `register(subparsers)` (adds its parser, sets `func`) and a
`run(args) -> int` that parses flags into a config and calls a library function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module names under cinema_trt.cli, in the order `--help` lists them
SUBCOMMANDS = ("demo", "generate", "export", "build", "inspect", "compare", "repo", "serve",
               "deploy", "bench", "bench_replicas", "memory_plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinema-trt",
        description="CINEMA multi-subject video generation: export, build, serve, benchmark.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"cinema_trt.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        # bad input: one clear line, no traceback
        logging.getLogger("cinema_trt").error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
