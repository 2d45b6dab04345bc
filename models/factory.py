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

from .aligner import AlignerNet, create_aligner
from .dit import CinemaDiT, create_dit
from .fileio import atomic_write
from .presets import DEFAULT_PRESET, CinemaConfig, get_preset
from .runner import Runner, TorchRunner
from .stages import MLLM, STAGES, stage
from .video_vae import VideoVAE, create_vae

# .mllm and .pipeline import transformers (~2-3 s): they are imported inside the functions
# that need them, so a served non-MLLM stage (serving/stage_model.py) never loads it
if TYPE_CHECKING:
    from transformers import Qwen2VLProcessor

    from .mllm import MLLMEncoder
    from .pipeline import CinemaPipeline

log = logging.getLogger(__name__)

CONFIG_FILE = "cinema_config.json"
MLLM_FOLDER = MLLM.weights_entry  # the Hugging Face folder: weights and processor
# one stage per entry of a weights folder (both VAE stages are halves of vae.safetensors)
_ENTRIES = {s.weights_entry: s for s in STAGES}


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for owner in _ENTRIES.values():
        owner.save(models, folder)
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
    for part in CinemaConfig.sections():
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
    parts = {s.part: s.load_part(folder, saved) for s in _ENTRIES.values() if s is not MLLM}
    models = CinemaModels(config=saved, mllm=mllm, processor=processor, **parts)
    log.info("loaded %s weights from %s", saved.name, folder)
    return models


def torch_runners(models: CinemaModels, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> dict[str, Runner]:
    return {s.name: TorchRunner(s.name, s.module(models), s.spec(models.config).output_names,
                                device, dtype) for s in STAGES}


def torch_stage_runner(folder: str | os.PathLike, name: str, config: CinemaConfig,
                       device: str | torch.device = "cpu") -> Runner:
    """The torch runner of stage `name` from a weights folder saved for `config`; only the
    stage's own entry is read (Stage.load), so a served stage model's folder is enough."""
    runs = stage(name)
    return TorchRunner(name, runs.load(folder, config), runs.spec(config).output_names, device)


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
