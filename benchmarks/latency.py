"""Per-stage and whole-pipeline latency of CINEMA, runtimes side by side: `run_benchmark`.

    1. build the preset's models and the request (sampler defaults, bundled references)
    2. run the request once on torch fp32 and capture every stage's inputs
    3. per (runtime, precision): export/build/load, time each stage on the captured
       inputs, then the whole request through CinemaPipeline (measurements.py)
    4. optionally the same request through a Triton server serving the same runtime
       (served.py)

The pipeline runs `steps` dit calls and both text branches (the unconditional one is
cached after a pipeline's first request, as in a server).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import GenerationRequest
from cinema_trt.models.presets import CinemaConfig

from .capture import describe_shapes
from .config import BenchConfig
from .machine import Provenance
from .measurements import Inputs, capture, measure_variants
from .plan import plan_variants
from .result import BenchResult
from .timing import clock_name

log = logging.getLogger(__name__)


def bench_request(bench: BenchConfig, config: CinemaConfig) -> tuple[GenerationRequest, dict]:
    """The preset's default request with the first `refs` bundled images; + its record."""
    paths = sample_references()[:bench.refs]
    request = GenerationRequest.with_defaults(config, bench.prompt,
                                              [load_image(p) for p in paths], seed=bench.seed)
    request.validate(config)
    record = {"prompt": request.prompt, "refs": [p.name for p in paths],
              "ref_sizes": [list(r.shape) for r in request.refs], "frames": request.frames,
              "height": request.height, "width": request.width, "steps": request.steps,
              "guidance": request.guidance, "shift": config.sampler.shift,
              "seed": request.seed, "fps": request.fps}
    return request, record


def _notes(bench: BenchConfig, planned: list[tuple[str, str]]) -> list[str]:
    order = ("round-robin across variants (--interleave)" if bench.interleave
             else "one variant after another")
    notes = [f"{bench.warmup} untimed warm-up call(s), then {bench.runs} timed call(s) per "
             f"measurement, {order}; p99 of fewer than 100 samples lies between the "
             "largest two",
             "dit = one denoising step (CFG batch of 2); pipeline = the whole request "
             "(preprocessing, both text branches, every dit step, decode)",
             f"intra-op threads: {bench.threads or 'each library default'}"]
    if any(precision == "fp8" for _, precision in planned):
        notes.append("fp8 variants time only their FP8 stages; their other stages are the "
                     "base variant's (see variants[].stage_precisions)")
    if bench.warmup == 0:
        notes.append("warmup=0: the first pipeline sample includes the unconditional text "
                     "branch, which later requests take from the cache")
    if bench.served:
        notes.append("served = one CinemaClient.stream call with streamed frames "
                     "(readiness check, gRPC stream, server, PNG-encoded references, the "
                     "video in one chunk per decoder call, assembled by the client) to a "
                     "local Triton server whose python-backend stage models run the "
                     "variant's runtime; host clock; overhead = served p50 / in-process "
                     "pipeline p50")
        notes.append("first_frame = from the start of each timed served call until its "
                     "first decoded frames reached the client; ratio = first_frame / "
                     "served, at p50 and at the minima")
    return notes


@contextlib.contextmanager
def _torch_threads(threads: int):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_benchmark(bench: BenchConfig) -> BenchResult:
    """Measure every planned (runtime, precision) on one captured request; see module doc."""
    from cinema_trt.models.factory import build_models, load_models

    with _torch_threads(bench.threads):
        run = Provenance.start()
        config = bench.model_config()
        planned, skipped = plan_variants(bench)
        for skip in skipped:
            log.info("skipping %s %s: %s", skip.runtime, skip.precision, skip.reason)
        # seed 0: the exporter builds the same seeded weights, so cached exports can match
        models = load_models(bench.weights, config) if bench.weights else build_models(config)
        request, request_record = bench_request(bench, config)
        captured = capture(models, request, bench.device)
        measurements, variants, served_skips = measure_variants(
            bench, planned, Inputs(models, request, captured))
        skipped += served_skips
        return BenchResult(
            settings=bench, provenance=run.block(), config=config.to_dict(),
            request=request_record,
            shapes=describe_shapes(captured), clock=clock_name(bench.device),
            variants=tuple(variants), measurements=tuple(measurements), skipped=tuple(skipped),
            notes=tuple(_notes(bench, planned)))
