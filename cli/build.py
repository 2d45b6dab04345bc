"""`cinema-trt build`: exported ONNX stages -> TensorRT engines (or ORT-optimized CPU models)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .decoding import add_decoding, decoding
from .options import from_args

if TYPE_CHECKING:
    from cinema_trt.engines.build import BuildRequest

log = logging.getLogger(__name__)

TIMING_CACHE_FILE = "timing.cache"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cinema_trt.engines.config import BuildConfig, Precision
    from cinema_trt.export.manifest import MANIFEST_FILE, MODEL_FILE
    from cinema_trt.models.backends import BACKENDS, TENSORRT, TENSORRT_RTX, minimum_targets

    default = BuildConfig()
    p = subparsers.add_parser(
        "build", help="build TensorRT engines (or ONNX Runtime CPU models) from an export",
        description=f"Builds <out>/<stage>/model.plan + layers.json + {MANIFEST_FILE} for "
                    "every stage exported under --onnx and prints each engine's report. An engine "
                    "is reused when its cache key (ONNX bytes, build options and targets, "
                    "profiles, backend and version, build GPU) is unchanged.")
    p.add_argument("--onnx", type=Path, required=True,
                   help=f"export folder: <stage>/{MODEL_FILE} + <stage>/{MANIFEST_FILE}")
    p.add_argument("--out", type=Path, required=True, help="engine folder to write")
    p.add_argument("--precision", required=True, choices=[x.value for x in Precision])
    p.add_argument("--profile", type=Path,
                   help="profiles.yaml with deployment shapes (default: the preset's "
                        "sampler shapes; schema in engines/shapes.py)")
    p.add_argument("--runtime", default=TENSORRT.name, choices=list(BACKENDS),
                   help="tensorrt (data-center GPUs; builds on the GPU it targets), "
                        "tensorrt-rtx (RTX / workstation GPUs; builds on any machine, CPU "
                        "included, for --targets) or ort (ONNX Runtime CPU models; run them "
                        "with `cinema-trt generate --runtime ort --onnx <out>`)")
    p.add_argument("--targets", metavar="SM,...",
                   help=f"tensorrt-rtx: GPU architectures to compile for (from "
                        f"{','.join(TENSORRT_RTX.targets)}; default: every one the "
                        f"precision allows: {minimum_targets()})")
    p.add_argument("--stages", nargs="+", default=(), metavar="STAGE",
                   help="stages to build (default: every exported stage)")
    p.add_argument("--workspace-gib", type=float, default=default.workspace_gib,
                   help="TensorRT workspace memory pool limit")
    p.add_argument("--optimization-level", type=int, default=default.optimization_level,
                   help="TensorRT builder optimization level 0..5 (higher: slower build, "
                        "maybe faster engine)")
    p.add_argument("--timing-cache", type=Path,
                   help=f"--runtime tensorrt: timing cache to load and update (default: "
                        f"<out>/{TIMING_CACHE_FILE}); it only speeds up rebuilds")
    p.add_argument("--weight-streaming", action="store_true",
                   help="build so weights can stream from host memory (strongly typed)")
    p.add_argument("--refittable", action="store_true",
                   help="build a refittable engine (weights replaceable without a rebuild)")
    add_decoding(p)
    p.set_defaults(func=run)


def build_request(args: argparse.Namespace) -> BuildRequest:
    from cinema_trt.engines.build import BuildRequest
    from cinema_trt.engines.config import BuildConfig
    from cinema_trt.models.backends import get_backend, parse_targets

    timing_cache = args.timing_cache
    if timing_cache is None and get_backend(args.runtime).timing_cache:
        timing_cache = args.out / TIMING_CACHE_FILE
    config = from_args(BuildConfig, args, timing_cache=timing_cache,
                       targets=parse_targets(args.targets))
    return BuildRequest(onnx_dir=args.onnx, out_dir=args.out, build_config=config,
                        profile=args.profile, runtime=args.runtime, stages=tuple(args.stages),
                        decoding=decoding(args))


def run(args: argparse.Namespace) -> int:
    from cinema_trt.engines.build import build_stages
    from cinema_trt.engines.deps import MissingDependencyError
    from cinema_trt.engines.report import format_summary
    from cinema_trt.export.manifest import read_manifest

    try:
        built = build_stages(build_request(args))
    except MissingDependencyError as error:
        log.error("%s", error)
        return 2
    for stage, path in built.items():
        build = read_manifest(path.parent).build
        assert build is not None, "build_stages writes build manifests"
        targets = f" for {','.join(build.targets)}" if build.targets else ""
        print(f"{stage}: {path} ({build.runtime} {build.runtime_version}, "
              f"{build.precision}{targets})")
        if build.report:
            print(format_summary(stage, build.report))
    return 0
