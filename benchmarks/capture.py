"""Stage inputs captured from one real pipeline request, so every runtime is timed on the
tensors a user's request actually produces (token counts, reference patches, the CFG batch
of the DiT), not on synthetic shapes."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
from cinema_trt.models.runner import Runner, Tensors
from cinema_trt.models.stages import STAGES

StageInputs = dict[str, Tensors]


class _Recorder:
    """Wraps a runner; keeps a CPU copy of the inputs of its first call."""

    def __init__(self, inner: Runner):
        self.inner = inner
        self.name = inner.name
        self.first: Tensors | None = None

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        if self.first is None:
            self.first = {k: v.detach().to("cpu", copy=True) for k, v in inputs.items()}
        return self.inner.run(inputs)


def capture_stage_inputs(pipeline: CinemaPipeline, request: GenerationRequest) -> StageInputs:
    """Run `request` once and return, per stage, the inputs of that stage's first call.

    The first calls are the ones that matter: MLLM and connector see the conditional
    prompt with its references (the unconditional branch is cached after the first
    request), the DiT sees step 1's (cond, uncond) batch of 2, whose shapes every later
    step repeats.
    """
    original = pipeline.runners
    recorders = {stage: _Recorder(runner) for stage, runner in original.items()}
    pipeline.runners = dict(recorders)
    try:
        pipeline.generate(request)
    finally:
        pipeline.runners = original
    captured = {s.name: recorders[s.name].first for s in STAGES}
    missing = [s for s, inputs in captured.items() if inputs is None]
    if missing:
        raise RuntimeError(f"the pipeline never called stages {missing}; cannot benchmark them")
    return {stage: inputs for stage, inputs in captured.items() if inputs is not None}


def describe_shapes(inputs: StageInputs) -> dict[str, dict[str, dict]]:
    """{stage: {tensor: {"shape": [...], "dtype": "float32"}}} for the record."""
    return {stage: {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for name, t in tensors.items()}
            for stage, tensors in inputs.items()}
