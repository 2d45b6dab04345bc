"""Build, save and load every CINEMA stage, and wrap them as torch runners.

A weights folder holds the resolved config beside the weights:
    cinema_config.json   the CinemaConfig the weights belong to
    mllm/                a local Hugging Face folder (Qwen2-VL + processor)
    connector.safetensors, vae.safetensors, dit.safetensors
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .aligner import AlignerNet, create_aligner
from .dit import CinemaDiT, create_dit
from .fileio import atomic_write
from .presets import DEFAULT_PRESET, CinemaConfig, get_preset
from .runner import Runner, TorchRunner
from .specs import stage_specs
from .vae import VideoVAE, create_vae
from .weights import load_stage, save_stage

# .mllm and .pipeline import transformers (~2-3 s): they are imported inside the functions
# that need them, so a served non-MLLM stage (serving/stage_model.py) never loads it
if TYPE_CHECKING:
    from transformers import Qwen2VLProcessor

    from .mllm import MLLMEncoder
    from .pipeline import CinemaPipeline

log = logging.getLogger(__name__)

CONFIG_FILE = "cinema_config.json"
MLLM_FOLDER = "mllm"
STAGE_FILES = {"aligner": "connector.safetensors", "vae": "vae.safetensors",
               "dit": "dit.safetensors"}
_PART_CLASSES = {"aligner": AlignerNet, "vae": VideoVAE, "dit": CinemaDiT}
# pipeline stage -> (CinemaModels field, submodule or None): both VAE stages are halves of
# the one VideoVAE in vae.safetensors
STAGE_PARTS = {"mllm": ("mllm", None), "connector": ("aligner", None),
               "vae_encoder": ("vae", "encoder"), "dit": ("dit", None),
               "vae_decoder": ("vae", "decoder")}


@dataclass
class CinemaModels:
    config: CinemaConfig
    mllm: MLLMEncoder
    processor: Qwen2VLProcessor
    aligner: AlignerNet
    vae: VideoVAE
    dit: CinemaDiT


def build_models(config: CinemaConfig, seed: int = 0) -> CinemaModels:
    """Every stage with deterministic random weights (hubs are unreachable; see weights.py)."""
    from .mllm import create_mllm

    mllm, processor = create_mllm(config.mllm, seed=seed)
    return CinemaModels(config=config, mllm=mllm, processor=processor,
                        aligner=create_aligner(config.aligner, seed=seed + 1),
                        vae=create_vae(config.vae, seed=seed + 2),
                        dit=create_dit(config.dit, seed=seed + 3))


def save_models(models: CinemaModels, folder: str | os.PathLike) -> Path:
    from .mllm import save_mllm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_mllm(models.mllm, models.processor, folder / MLLM_FOLDER)
    for attr, filename in STAGE_FILES.items():
        save_stage(getattr(models, attr), folder / filename,
                   metadata={"preset": models.config.name})
    # the config goes last: a folder with a config is a complete folder
    atomic_write(folder / CONFIG_FILE, models.config.to_json())
    return folder


def read_weights_config(folder: str | os.PathLike) -> CinemaConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a weights folder needs the {CONFIG_FILE} "
                                "written by save_models (or `cinema-trt export`)")
    return CinemaConfig.from_dict(json.loads(path.read_text()))


def check_same_architecture(expected: CinemaConfig, found: CinemaConfig, where: str) -> None:
    """Refuse weights built for another architecture (sampler defaults may differ)."""
    for part in ("mllm", "aligner", "vae", "dit"):
        a, b = dataclasses.asdict(getattr(expected, part)), dataclasses.asdict(getattr(found, part))
        for key in a:
            if key != "attention_backend" and a[key] != b.get(key):
                raise ValueError(f"{where} was saved for preset {found.name!r}: {part}.{key}="
                                 f"{b.get(key)!r}, but preset {expected.name!r} has {a[key]!r}")


def resolve_weights_config(folder: str | os.PathLike,
                           config: CinemaConfig | None = None) -> CinemaConfig:
    """The weights folder is the architecture: its own cinema_config.json. A given `config`
    (e.g. a preset) must match it, and supplies the sampler defaults and attention backend."""
    saved = read_weights_config(folder)
    if config is None:
        return saved
    check_same_architecture(config, saved, str(folder))
    return dataclasses.replace(saved, sampler=config.sampler, dit=dataclasses.replace(
        saved.dit, attention_backend=config.dit.attention_backend))


def command_config(preset: str | None, weights: str | os.PathLike | None) -> CinemaConfig:
    """What a command's `--preset`/`--weights` run: the weights folder's own config (a
    preset given too must agree), else the preset (default DEFAULT_PRESET)."""
    if weights is None:
        return get_preset(preset or DEFAULT_PRESET)
    return resolve_weights_config(weights, get_preset(preset) if preset else None)


def load_models(folder: str | os.PathLike, config: CinemaConfig | None = None) -> CinemaModels:
    """Load a weights folder; `config` (e.g. a preset) must match the saved architecture."""
    from .mllm import load_mllm

    folder = Path(folder)
    saved = resolve_weights_config(folder, config)
    mllm, processor = load_mllm(folder / MLLM_FOLDER, saved.mllm)
    models = CinemaModels(config=saved, mllm=mllm, processor=processor,
                          aligner=load_stage(AlignerNet(saved.aligner),
                                             folder / STAGE_FILES["aligner"]),
                          vae=load_stage(VideoVAE(saved.vae), folder / STAGE_FILES["vae"]),
                          dit=load_stage(CinemaDiT(saved.dit), folder / STAGE_FILES["dit"]))
    log.info("loaded %s weights from %s", saved.name, folder)
    return models


def _load_part(folder: Path, part: str, config: CinemaConfig) -> nn.Module:
    """One safetensors part ("aligner", "vae", "dit"), loaded strictly (weights.load_stage)."""
    module = _PART_CLASSES[part](getattr(config, part))
    return load_stage(module, folder / STAGE_FILES[part])


def stage_weight_entries(stage: str) -> tuple[str, ...]:
    """The entries of a weights folder (besides cinema_config.json) that `stage` loads."""
    _check_stage(stage)
    part = STAGE_PARTS[stage][0]
    return (MLLM_FOLDER,) if part == "mllm" else (STAGE_FILES[part],)


def _check_stage(stage: str) -> None:
    if stage not in STAGE_PARTS:
        raise ValueError(f"stage={stage!r} has no PyTorch weights; stages with weights: "
                         f"{list(STAGE_PARTS)}")


def load_stage_module(folder: str | os.PathLike, stage: str,
                      config: CinemaConfig) -> nn.Module:
    """The module `torch_runners` runs for pipeline `stage`, loaded from a weights folder
    saved for `config` (read_weights_config). Only `stage_weight_entries(stage)` are read,
    so the partial folder of a served stage model (serving/repo.py) is enough."""
    _check_stage(stage)
    folder = Path(folder)
    part, submodule = STAGE_PARTS[stage]
    if part == "mllm":
        from .mllm import load_mllm

        return load_mllm(folder / MLLM_FOLDER, config.mllm)[0]
    return _stage_of(_load_part(folder, part, config), submodule)


def _stage_of(part: nn.Module, submodule: str | None) -> nn.Module:
    return getattr(part, submodule) if submodule else part


def torch_runners(models: CinemaModels, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> dict[str, Runner]:
    specs = stage_specs(models.config)
    return {stage: TorchRunner(stage, _stage_of(getattr(models, part), submodule),
                               specs[stage].output_names, device, dtype)
            for stage, (part, submodule) in STAGE_PARTS.items()}


def pipeline_processor(config: CinemaConfig, weights: str | os.PathLike | None = None
                       ) -> Qwen2VLProcessor:
    """The Qwen2-VL processor: from a weights folder when given, else built from the preset."""
    from .mllm import build_processor, load_mllm

    if weights:
        return load_mllm(Path(weights) / MLLM_FOLDER, config.mllm)[1]
    return build_processor(config.mllm)


def torch_pipeline(config: CinemaConfig | str, weights: str | os.PathLike | None = None,
                   device: str = "cpu", seed: int = 0) -> CinemaPipeline:
    """The reference pipeline on PyTorch: random weights from a preset, or a weights folder."""
    from .pipeline import CinemaPipeline

    if isinstance(config, str):
        config = get_preset(config)
    models = load_models(weights, config) if weights else build_models(config, seed=seed)
    return CinemaPipeline(models.config, torch_runners(models, device), models.processor)
