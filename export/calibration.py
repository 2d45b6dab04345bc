"""FP8 calibration on real pipeline runs: hooks on the torch stages while CinemaPipeline
generates a few videos, so the activation ranges are the ones inference will see (every
sampler timestep, conditional and unconditional CFG branches, 1..K references)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass

from torch import nn

from .fp8 import RECIPES, AmaxObserver

logger = logging.getLogger(__name__)

# varied subjects, motion and camera words; short, so tiny presets tokenize them quickly
CALIBRATION_PROMPTS = (
    "A red circle and a blue square dance around each other on a wooden table.",
    "The yellow star rises slowly over a calm sea while the camera pans left.",
    "Two friends walk through a busy market at dusk, close-up, handheld camera.",
    "A green triangle spins in the rain, then stops and glows brightly.",
)


@dataclass(frozen=True)
class CalibrationConfig:
    """Which runs calibrate: prompts[i] with refs_per_prompt[i] bundled sample images.

    The sampler settings (frames, size, steps, guidance) are the preset's defaults, so
    calibration sees the inference timesteps. Two runs with 1 and 2 references are
    enough for max calibration of a deterministic network: amax converges after the
    first few calls of each timestep.
    """

    prompts: tuple[str, ...] = CALIBRATION_PROMPTS[:2]
    refs_per_prompt: tuple[int, ...] = (1, 2)
    seed: int = 0

    def __post_init__(self):
        if not self.prompts or len(self.prompts) != len(self.refs_per_prompt):
            raise ValueError(f"need one reference count per prompt; got {len(self.prompts)} "
                             f"prompts and refs_per_prompt={self.refs_per_prompt}")


def calibration_requests(config, calibration: CalibrationConfig) -> list:
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import GenerationRequest

    images = [load_image(p) for p in sample_references()]
    requests = []
    for i, (prompt, count) in enumerate(zip(calibration.prompts, calibration.refs_per_prompt)):
        refs = tuple(images[(i + k) % len(images)] for k in range(count))
        requests.append(GenerationRequest.with_defaults(config, prompt, refs,
                                                        seed=calibration.seed + i))
    return requests


def calibrate(models, modules: dict[str, nn.Module],
              calibration: CalibrationConfig | None = None) -> dict[str, dict[str, float]]:
    """Per stage in `modules` (stage name -> the module that is exported), the input amax
    of every Linear its FP8 recipe quantizes, from torch pipeline runs on `models`."""
    from cinema_trt.models.factory import torch_runners
    from cinema_trt.models.pipeline import CinemaPipeline

    calibration = calibration or CalibrationConfig()
    pipeline = CinemaPipeline(models.config, torch_runners(models), models.processor)
    with ExitStack() as stack:
        observers = {stage: stack.enter_context(
            AmaxObserver(module, RECIPES[stage].layers(module)))
            for stage, module in modules.items()}
        for request in calibration_requests(models.config, calibration):
            pipeline.generate(request)
    for stage, observer in observers.items():
        observer.check_complete()
        logger.info("calibrated %s: %d layers over %d calls", stage, len(observer.amax),
                    max(observer.calls.values()))
    return {stage: dict(o.amax) for stage, o in observers.items()}
