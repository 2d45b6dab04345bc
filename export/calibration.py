"""FP8 calibration on real pipeline runs: the torch stages are observed while CinemaPipeline
generates a few videos, so the activation ranges are the ones inference will see (every
sampler timestep, conditional and unconditional CFG branches, 1..K references).

Two calibrators give the same per-layer input amax (both are max calibration over the same
runs) for `insert_fp8_qdq`, so the emitted graph is the same standard Q/DQ either way:

- "builtin" (default): forward pre-hooks on the recipe's Linear layers (`AmaxObserver`).
  No extra dependency, nothing to import (ModelOpt's import alone takes 10-20 s on CPU).
- "modelopt": NVIDIA ModelOpt's `mtq.quantize` with our recipe as its config, on deep
  copies of the calibrated stages (ModelOpt converts Linear layers in place, and the
  export must trace the untouched modules). Costs one extra copy of those weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from torch import nn

from cinema_trt.models.precision import Precision
from cinema_trt.models.stages import graph

from .fp8 import FP8_E4M3_BITS, AmaxObserver

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels
    from cinema_trt.models.pipeline import GenerationRequest
    from cinema_trt.models.presets import CinemaConfig

logger = logging.getLogger(__name__)

CALIBRATORS = ("builtin", "modelopt")
MODELOPT_HINT = ("the modelopt calibrator needs NVIDIA ModelOpt: `pip install "
                 "'cinema-trt[quant]'` (nvidia-modelopt; installs without changing torch), "
                 "or use calibrator builtin, which gives the same amax")

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


def calibration_requests(config: CinemaConfig, calibration: CalibrationConfig
                         ) -> list[GenerationRequest]:
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import GenerationRequest

    images = [load_image(p) for p in sample_references()]
    requests = []
    pairs = zip(calibration.prompts, calibration.refs_per_prompt, strict=True)
    for i, (prompt, count) in enumerate(pairs):
        refs = tuple(images[(i + k) % len(images)] for k in range(count))
        requests.append(GenerationRequest.with_defaults(config, prompt, refs,
                                                        seed=calibration.seed + i))
    return requests


def _recipe(name: str):
    return graph(name).recipes[Precision.FP8]


def calibrate(models: CinemaModels, modules: dict[str, nn.Module],
              calibration: CalibrationConfig | None = None,
              calibrator: str = "builtin") -> dict[str, dict[str, float]]:
    """Per stage in `modules` (stage name -> the module that is exported), the input amax
    of every Linear its FP8 recipe quantizes, from torch pipeline runs on `models`."""
    if calibrator not in CALIBRATORS:
        raise ValueError(f"calibrator={calibrator!r} must be one of {list(CALIBRATORS)}")
    calibration = calibration or CalibrationConfig()
    if calibrator == "modelopt":
        return _modelopt_amax(models, modules, calibration)
    with ExitStack() as stack:
        observers = {stage: stack.enter_context(
            AmaxObserver(module, _recipe(stage).layers(module)))
            for stage, module in modules.items()}
        _run_pipeline(models, calibration)
    for stage, observer in observers.items():
        observer.check_complete()
        logger.info("calibrated %s: %d layers over %d calls", stage, len(observer.amax),
                    max(observer.calls.values()))
    return {stage: dict(o.amax) for stage, o in observers.items()}


def _run_pipeline(models, calibration: CalibrationConfig) -> None:
    from cinema_trt.models.factory import torch_runners
    from cinema_trt.models.pipeline import CinemaPipeline

    pipeline = CinemaPipeline(models.config, torch_runners(models), models.processor)
    for request in calibration_requests(models.config, calibration):
        pipeline.generate(request)


# --- ModelOpt -----------------------------------------------------------------------------


class ModelOptMissingError(ImportError):
    """calibrator="modelopt" without nvidia-modelopt installed; the message says how."""


def import_modelopt() -> ModuleType:
    """`modelopt.torch.quantization`, or ModelOptMissingError with the install hint."""
    try:
        with warnings.catch_warnings():
            # it warns that transformers is newer than it was tested with; only its torch
            # quantizers are used here, on modules we convert ourselves
            warnings.filterwarnings("ignore", message=".*transformers.*", category=UserWarning)
            import modelopt.torch.quantization as mtq
    except ImportError as error:
        raise ModelOptMissingError(f"{MODELOPT_HINT} (import error: {error})") from error
    return mtq


def modelopt_config(modules: dict[str, nn.Module]) -> dict:
    """Our FP8 recipes as one ModelOpt config over `nn.ModuleDict(modules)`: every quantizer
    off, then FP8 E4M3 per-tensor inputs and per-output-channel weights (torch Linear
    weights are (out, in): axis 0) on every nn.Linear, max calibration, then the recipe's
    exclusions switched off by wildcard. The exclusions are listed by module path, taken
    from `Recipe.excluded`, so the recipe's regexes stay the one definition."""
    entries = [{"quantizer_name": "*", "enable": False},
               {"quantizer_name": "*input_quantizer", "parent_class": "nn.Linear",
                "cfg": {"num_bits": FP8_E4M3_BITS, "axis": None}},
               {"quantizer_name": "*weight_quantizer", "parent_class": "nn.Linear",
                "cfg": {"num_bits": FP8_E4M3_BITS, "axis": 0}}]
    for stage, module in modules.items():
        entries += [{"quantizer_name": f"{stage}.{name}.*", "enable": False}
                    for name in _recipe(stage).excluded(module)]
    return {"quant_cfg": entries, "algorithm": "max"}


def calibration_copy(models: CinemaModels, modules: dict[str, nn.Module]
                     ) -> tuple[CinemaModels, dict[str, nn.Module]]:
    """(models, modules) deep-copied together: every model stage that shares weights with a
    module in `modules` (dit, aligner, mllm) is copied, and each copied module keeps
    sharing them with its copied stage (one deepcopy memo), so pipeline runs on the copy
    go through the copied modules. Other stages (the VAE) are not copied."""
    params = {id(p) for module in modules.values() for p in module.parameters()}
    owners = {f.name: getattr(models, f.name) for f in dataclasses.fields(models)
              if isinstance(getattr(models, f.name), nn.Module)
              and any(id(p) in params for p in getattr(models, f.name).parameters())}
    owners, copies = copy.deepcopy((owners, modules))
    return dataclasses.replace(models, **owners), copies


def _modelopt_amax(models, modules: dict[str, nn.Module],
                   calibration: CalibrationConfig) -> dict[str, dict[str, float]]:
    mtq = import_modelopt()
    calib_models, copies = calibration_copy(models, modules)
    root = nn.ModuleDict(copies)
    # the loop ignores the module it is given: the pipeline runs the same (copied) modules
    mtq.quantize(root, modelopt_config(copies), lambda _root: _run_pipeline(calib_models,
                                                                            calibration))
    amax = {stage: modelopt_input_amax(module, _recipe(stage).layers(modules[stage]))
            for stage, module in copies.items()}
    for stage, layers in amax.items():
        logger.info("calibrated %s with ModelOpt: %d layers", stage, len(layers))
    return amax


def modelopt_input_amax(module: nn.Module, layers: list[str]) -> dict[str, float]:
    """{layer: input amax} of a ModelOpt-calibrated module, after checking that exactly
    `layers` (the recipe's) have enabled input quantizers and that each saw data."""
    enabled = {name.removesuffix(".input_quantizer"): quantizer
               for name, quantizer in module.named_modules()
               if name.endswith(".input_quantizer") and quantizer.is_enabled}
    if set(enabled) != set(layers):
        raise RuntimeError(f"ModelOpt quantized {sorted(set(enabled) - set(layers))} beyond "
                           f"the recipe and missed {sorted(set(layers) - set(enabled))}; "
                           f"check modelopt_config against this ModelOpt version")
    unseen = sorted(name for name, q in enabled.items() if q.amax is None)
    if unseen:
        raise RuntimeError(f"calibration never ran layers {unseen}; the calibration "
                           f"requests do not exercise the whole stage")
    return {name: float(enabled[name].amax) for name in layers}
