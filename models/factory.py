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

import torch

from .aligner import AlignerNet, create_aligner
from .dit import CinemaDiT, create_dit
from .fileio import atomic_write
from .mllm import MLLMEncoder, build_processor, create_mllm, load_mllm, save_mllm
from .pipeline import CinemaPipeline
from .presets import CinemaConfig, get_preset
from .runner import Runner, TorchRunner
from .specs import stage_specs
from .vae import VideoVAE, create_vae
from .weights import load_stage, save_stage

log = logging.getLogger(__name__)

CONFIG_FILE = "cinema_config.json"
STAGE_FILES = {"aligner": "connector.safetensors", "vae": "vae.safetensors",
               "dit": "dit.safetensors"}


@dataclass
class CinemaModels:
    config: CinemaConfig
    mllm: MLLMEncoder
    processor: object  # transformers Qwen2VLProcessor
    aligner: AlignerNet
    vae: VideoVAE
    dit: CinemaDiT


def build_models(config: CinemaConfig, seed: int = 0) -> CinemaModels:
    """Every stage with deterministic random weights (hubs are unreachable; see weights.py)."""
    mllm, processor = create_mllm(config.mllm, seed=seed)
    return CinemaModels(config=config, mllm=mllm, processor=processor,
                        aligner=create_aligner(config.aligner, seed=seed + 1),
                        vae=create_vae(config.vae, seed=seed + 2),
                        dit=create_dit(config.dit, seed=seed + 3))


def save_models(models: CinemaModels, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_mllm(models.mllm, models.processor, folder / "mllm")
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


def load_models(folder: str | os.PathLike, config: CinemaConfig | None = None) -> CinemaModels:
    """Load a weights folder; `config` (e.g. a preset) must match the saved architecture."""
    folder = Path(folder)
    saved = read_weights_config(folder)
    if config is not None:
        check_same_architecture(config, saved, str(folder))
        saved = dataclasses.replace(saved, dit=dataclasses.replace(
            saved.dit, attention_backend=config.dit.attention_backend), sampler=config.sampler)
    mllm, processor = load_mllm(folder / "mllm", saved.mllm)
    models = CinemaModels(config=saved, mllm=mllm, processor=processor,
                          aligner=AlignerNet(saved.aligner), vae=VideoVAE(saved.vae),
                          dit=CinemaDiT(saved.dit))
    for attr, filename in STAGE_FILES.items():
        load_stage(getattr(models, attr), folder / filename)
    log.info("loaded %s weights from %s", saved.name, folder)
    return models


def torch_runners(models: CinemaModels, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> dict[str, Runner]:
    specs = stage_specs(models.config)
    modules = {"mllm": models.mllm, "connector": models.aligner,
               "vae_encoder": models.vae.encoder, "dit": models.dit,
               "vae_decoder": models.vae.decoder}
    return {stage: TorchRunner(stage, module, specs[stage].output_names, device, dtype)
            for stage, module in modules.items()}


def pipeline_processor(config: CinemaConfig, weights: str | os.PathLike | None = None):
    """The Qwen2-VL processor: from a weights folder when given, else built from the preset."""
    if weights:
        return load_mllm(Path(weights) / "mllm", config.mllm)[1]
    return build_processor(config.mllm)


def torch_pipeline(config: CinemaConfig | str, weights: str | os.PathLike | None = None,
                   device: str = "cpu", seed: int = 0) -> CinemaPipeline:
    """The reference pipeline on PyTorch: random weights from a preset, or a weights folder."""
    if isinstance(config, str):
        config = get_preset(config)
    models = load_models(weights, config) if weights else build_models(config, seed=seed)
    return CinemaPipeline(models.config, torch_runners(models, device), models.processor)
