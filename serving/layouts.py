"""Which runners the `cinema` model's pipeline calls, per repository layout
(serving/served_memory.py prices both; `cinema-trt repo --layout` writes either).

    per-stage  one Triton model per stage; the pipeline calls each through BLS
               (`BlsRunner`), each stage model is its own process (on a GPU: its own CUDA
               context and activation region) and warms up through Triton's model_warmup
    shared     no stage models: the `cinema` model's own process loads every stage runner
               with the stage models' loader (serving/stage_model.py `load_runners`; the
               TensorRT engines share one activation region, engines/trt_memory.py), and
               warms each one up before `initialize` returns, so Triton reports the model
               ready only once every runner has loaded and run. One lock serialises the
               calls to the runners: they share that region and are not thread-safe;
               concurrent requests still interleave between stage calls.

In the shared layout no stage is reachable over gRPC, so the boundary checks of a stage
model (serving/stage_checks.py) have nothing to guard: the pipeline built the inputs from
a request `protocol.decode_request` already bounded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from cinema_trt.models.backends import TORCH
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.runner import Runner, Tensors, compute_dtype
from cinema_trt.models.stages import STAGES

from .served_memory import PER_STAGE, SHARED, check_layout

log = logging.getLogger(__name__)

# config.pbtxt parameters of the `cinema` model (serving/repo.py writes them)
LAYOUT_PARAMETER = "layout"
RUNTIME_PARAMETER = "runtime"  # shared: what runs the stages (as a stage model's `runtime`)
THREADS_PARAMETER = "torch_threads"
# per-stage: {stage: compute dtype} of the stage models whose graphs take tensors in their
# compute dtype (Stage.exported_spec: the decoder's chunk state), for the BLS runners' specs
COMPUTE_PARAMETER = "compute_dtypes"


class SerialRunner:
    """A runner whose calls take `lock` first: runners sharing one lock run one at a time."""

    def __init__(self, runner: Runner, lock: threading.Lock):
        self.name = runner.name
        self.runner = runner
        self.lock = lock

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        with self.lock:
            return self.runner.run(inputs)

    def __getattr__(self, name: str):
        # the wrapped runner's facts (its manifest: what its graph computes in)
        return getattr(self.runner, name)


def orchestrator_runners(config: CinemaConfig, folder: Path, parameters: Mapping[str, str],
                         device: str = "cpu") -> dict[str, Runner]:
    """{stage: runner} for the `cinema` model whose version folder is `folder` and whose
    config.pbtxt `parameters` name the layout (default per-stage, module doc)."""
    layout = check_layout(parameters.get(LAYOUT_PARAMETER, PER_STAGE))
    if layout == PER_STAGE:
        from .bls import BlsRunner

        computes = json.loads(parameters.get(COMPUTE_PARAMETER, "{}"))
        return {s.name: BlsRunner(s.exported_spec(config, c), compute=c)
                for s in STAGES for c in [computes.get(s.name, "float32")]}
    assert layout == SHARED
    return shared_runners(config, folder, parameters, device)


def shared_runners(config: CinemaConfig, folder: Path, parameters: Mapping[str, str],
                   device: str = "cpu") -> dict[str, Runner]:
    """Every stage's runner loaded from `folder` and warmed up, behind one lock."""
    from .stage_model import STREAMING_PARAMETER, load_failure, load_runners, parse_budgets
    from .warmup import WARMUP_RUNTIMES, warmup_inputs

    runtime = parameters.get(RUNTIME_PARAMETER, TORCH)
    threads = int(parameters.get(THREADS_PARAMETER, "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    budgets = parse_budgets(parameters.get(STREAMING_PARAMETER, "{}"))
    begin = time.perf_counter()
    try:
        runners = load_runners(folder, tuple(s.name for s in STAGES), device, runtime, budgets)
    except (OSError, ValueError, RuntimeError) as error:  # the model load fails, saying why
        raise RuntimeError(load_failure(error)) from error
    log.info("shared layout: %d stage runners loaded from %s (%s on %s) in %.1f s",
             len(runners), folder, runtime, device, time.perf_counter() - begin)
    if runtime in WARMUP_RUNTIMES:  # engines' profiles may not hold the default size
        for stage in STAGES:
            begin = time.perf_counter()
            try:
                runner = runners[stage.name]
                spec = stage.exported_spec(config, compute_dtype(runner))
                runner.run(warmup_inputs(config, stage, spec))
            except (ValueError, RuntimeError) as error:
                raise RuntimeError(f"stage {stage.name!r} failed its warm-up run: {error}") \
                    from error
            log.info("stage %s warmed up in %.2f s", stage.name, time.perf_counter() - begin)
    lock = threading.Lock()
    return {name: SerialRunner(runner, lock) for name, runner in runners.items()}
