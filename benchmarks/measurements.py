"""Time every variant: its stages on the captured inputs, the whole request through
`CinemaPipeline`, and (with `served`) the same request through a Triton server serving
the same runtime; variants one after another, or round-robin (`interleave`).

Stages are timed one call at a time: mllm and connector on the conditional prompt, the
vae_encoder on all references, the dit for ONE denoising step with the CFG batch of 2,
the vae_decoder on the first chunk of the final latents (one call of its step graph: a
decode makes one per `sampler.decode_chunk` latent frames). A served request's time to
first frame is recorded by its own calls (benchmarks/served.py) and becomes the
`first_frame` measurement beside it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cinema_trt.models.backends import ORT
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest

from .capture import StageInputs, capture_stage_inputs
from .config import BenchConfig
from .result import TARGETS, Measurement
from .served import served_session
from .stats import summarize

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels
from .plan import Skip
from .timing import measure, measure_interleaved
from .variants import Variant, build_variant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One thing to time: a variant's stage call, its whole request, or a served request."""

    runtime: str
    precision: str
    target: str
    fn: Callable[[], object]
    clock: str = ""  # device whose clock times it; "" = the benchmark's device
    # a served job's calls append their time to first frame here (ms, warm-ups included)
    first_frame_ms: list[float] | None = None

    def measurement(self, samples: list[float]) -> Measurement:
        return Measurement(self.runtime, self.precision, self.target, tuple(samples),
                           summarize(samples))

    def first_frame(self, runs: int) -> list[Measurement]:
        """The `first_frame` measurement of the last `runs` (the timed) calls, if any."""
        if not self.first_frame_ms:
            return []
        if len(self.first_frame_ms) < runs:
            raise ValueError(f"{len(self.first_frame_ms)} first-frame times for {runs} runs")
        return [dataclasses.replace(self, target="first_frame").measurement(
            self.first_frame_ms[-runs:])]


@dataclass
class Inputs:
    """What every measurement shares: the models, the request and its captured inputs."""

    models: CinemaModels
    request: GenerationRequest
    captured: StageInputs


def capture(models: CinemaModels, request: GenerationRequest, device: str) -> StageInputs:
    """Every stage's inputs from one run of `request` on torch fp32 on `device`."""
    from cinema_trt.models.factory import torch_runners

    source = models if device == "cpu" else copy.deepcopy(models)  # runners move modules
    pipeline = CinemaPipeline(models.config, torch_runners(source, device), models.processor)
    with torch.inference_mode():
        return capture_stage_inputs(pipeline, request)


def _placed(inputs: dict, variant: Variant, device: str) -> dict:
    """Inputs where the runtime reads them, so a stage sample times compute, not a host
    copy the pipeline would not make (ORT copies to the host itself)."""
    if variant.runtime == ORT.name or device == "cpu":
        return inputs
    return {k: v.to(device) for k, v in inputs.items()}


def variant_jobs(variant: Variant, shared: Inputs, device: str) -> list[Job]:
    pipeline = CinemaPipeline(shared.models.config, variant.runners, shared.models.processor)
    jobs = []
    for stage in variant.stages:
        runner, inputs = variant.runners[stage], _placed(shared.captured[stage], variant, device)
        jobs.append(Job(variant.runtime, variant.precision, stage,
                        functools.partial(runner.run, inputs)))
    jobs.append(Job(variant.runtime, variant.precision, "pipeline",
                    lambda: pipeline.generate(shared.request)))
    return jobs


def variant_record(variant: Variant) -> dict:
    return {"runtime": variant.runtime, "precision": variant.precision,
            "timed_stages": list(variant.stages),
            "stage_precisions": variant.stage_precisions, "setup": variant.setup,
            "served": None}


def _serve(stack: contextlib.ExitStack, variant: Variant, bench: BenchConfig,
           shared: Inputs, record: dict) -> Job:
    """Start a server for `variant` on `stack`; its request as a Job (host clock)."""
    if variant.served is None:
        raise ValueError(f"{variant.runtime} {variant.precision} is not served "
                         f"(see the record's skipped list)")
    session = stack.enter_context(served_session(shared.models, shared.request, bench,
                                                 variant.served))
    record["served"] = session.info()
    return Job(variant.runtime, variant.precision, "served", session.call, clock="cpu",
               first_frame_ms=session.first_frame_ms)


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _time(job: Job, bench: BenchConfig) -> list[Measurement]:
    samples = measure(job.fn, bench.runs, bench.warmup, job.clock or bench.device,
                      label=f"{job.runtime} {job.precision} {job.target}")
    return [job.measurement(samples), *job.first_frame(bench.runs)]


def _served_skips(bench: BenchConfig, variants: list[Variant]) -> list[Skip]:
    if not bench.served:
        return []
    return [Skip(v.runtime, v.precision, v.served_reason, target="served")
            for v in variants if v.served is None]


def _sequential(bench: BenchConfig, planned, shared: Inputs) -> tuple[list, list, list]:
    """One variant at a time: build, time its stages and pipeline, free it, then start
    its server (if served) and time that, so one copy of the weights is loaded at once."""
    measurements, records, skips = [], [], []
    for runtime, precision in planned:
        variant = build_variant(runtime, precision, shared.models, bench)
        record = variant_record(variant)
        skips += _served_skips(bench, [variant])
        with torch.inference_mode():
            measurements += [m for job in variant_jobs(variant, shared, bench.device)
                             for m in _time(job, bench)]
        served = bench.served and variant.served is not None
        variant.runners.clear()
        _release(bench.device)
        if served:
            with contextlib.ExitStack() as stack:
                measurements += _time(_serve(stack, variant, bench, shared, record), bench)
        records.append(record)
    return measurements, records, skips


def _interleaved(bench: BenchConfig, planned, shared: Inputs) -> tuple[list, list, list]:
    """Every variant (and server) up at once; each target timed round-robin across them.
    Served requests share the pipelines' rounds, so their ratio sees the same load."""
    variants = [build_variant(r, p, shared.models, bench) for r, p in planned]
    records = [variant_record(v) for v in variants]
    skips = _served_skips(bench, variants)
    measurements = []
    with contextlib.ExitStack() as stack:
        jobs = [job for v in variants for job in variant_jobs(v, shared, bench.device)]
        if bench.served:
            jobs += [_serve(stack, v, bench, shared, record)
                     for v, record in zip(variants, records, strict=True) if v.served is not None]
        with torch.inference_mode():
            for target in TARGETS[:-2]:  # "served" joins "pipeline"; "first_frame" is
                # recorded by the served calls themselves
                group = [job for job in jobs if job.target == target
                         or (target == "pipeline" and job.target == "served")]
                if not group:
                    continue
                samples = measure_interleaved([job.fn for job in group], bench.runs,
                                              bench.warmup,
                                              [job.clock or bench.device for job in group])
                measurements += [m for job, s in zip(group, samples, strict=True)
                                 for m in (job.measurement(s), *job.first_frame(bench.runs))]
    del variants, jobs
    _release(bench.device)
    return measurements, records, skips


def measure_variants(bench: BenchConfig, planned: list[tuple[str, str]], shared: Inputs
                     ) -> tuple[list[Measurement], list[dict], list[Skip]]:
    """(measurements in plan order, variant records, served variants skipped)."""
    run = _interleaved if bench.interleave else _sequential
    measurements, records, skips = run(bench, planned, shared)
    for m in measurements:
        log.info("%s %s %s: median %.2f ms", m.runtime, m.precision, m.target, m.stats.p50)
    measurements.sort(key=lambda m: (planned.index((m.runtime, m.precision)),
                                     TARGETS.index(m.target)))
    return measurements, records, skips
