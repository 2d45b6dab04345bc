"""Deployment shapes: the request sizes an engine must accept, and the per-input TensorRT
profiles derived from them through the stage specs (models/specs.py).

`profiles.yaml` schema (every key optional; a dim is `{min, opt, max}` or one int for a
static dim; a missing dim takes the preset's defaults, see `default_shapes`):

    preset: tiny                       # checked against the exported model's preset
    batch:  {min: 1, opt: 1, max: 1}   # videos per request
    frames: {min: 1, opt: 45, max: 45} # video frames, each 1 + 4k
    height: {min: 256, opt: 480, max: 480}  # pixels, multiples of 16
    width:  {min: 256, opt: 720, max: 720}
    refs:   {min: 1, opt: 2, max: 4}   # reference images per request
    seq:    {min: 1, opt: 400, max: 1400}  # MLLM tokens (prompt + template + image tokens)
    cfg: true                          # the DiT runs (cond, uncond) as one batch of 2

Each graph turns them into its own symbols (`Graph.symbols`, in its stage's file: the
DiT doubles the batch under CFG, the VAE encoder takes each reference as a one-frame
video, ...), at each level through `request_at`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinema_trt.models.presets import VAE_SPATIAL, CinemaConfig, latent_frames
from cinema_trt.models.specs import Dim, StageSpec, image_tokens, resolve
from cinema_trt.models.stage import Request
from cinema_trt.models.stages import lookup

DIM_KEYS = ("batch", "frames", "height", "width", "refs", "seq")
YAML_KEYS = (*DIM_KEYS, "preset", "cfg")
LEVELS = ("min", "opt", "max")

# Tokens around the prompt: system instruction, chat template and request sentence (180
# with the offline tokenizer of models/tokenizer.py, fewer with Qwen2's), and the
# "Subject k: ... \n" scaffolding around each reference (6); both rounded up.
TEMPLATE_TOKENS = 256
SUBJECT_TOKENS = 8
# Prompt tokens the default `seq` range plans for; longer prompts need `seq` in the yaml.
PROMPT_TOKENS = Dim(1, 77, 1024)
VISION_MARKERS = 2  # <|vision_start|> and <|vision_end|> around each image's tokens

Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max)


@dataclass(frozen=True)
class DeploymentShapes:
    batch: Dim
    frames: Dim
    height: Dim
    width: Dim
    refs: Dim
    seq: Dim
    cfg: bool = True
    source: str = field(default="", compare=False)  # the yaml it came from; "" = defaults

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: dataclasses.asdict(getattr(self, k)) for k in DIM_KEYS}
        data["cfg"] = self.cfg
        return data


# --- processor-derived limits -----------------------------------------------------------


def default_seq(config: CinemaConfig, refs: Dim) -> Dim:
    """Token range of the MLLM input: template + prompt + every image's tokens."""
    per_image = image_tokens(config, config.mllm.max_pixels) + VISION_MARKERS + SUBJECT_TOKENS
    return Dim(PROMPT_TOKENS.min,
               TEMPLATE_TOKENS + PROMPT_TOKENS.opt + refs.opt * per_image,
               TEMPLATE_TOKENS + PROMPT_TOKENS.max + refs.max * per_image)


def default_shapes(config: CinemaConfig) -> DeploymentShapes:
    """Static video shapes at the preset's sampler defaults, 1..max_refs references."""
    s = config.sampler
    max_refs = min(config.mllm.max_refs, config.dit.max_refs)
    refs = Dim(1, min(2, max_refs), max_refs)
    return DeploymentShapes(batch=Dim(1, 1, 1), frames=Dim(s.frames, s.frames, s.frames),
                            height=Dim(s.height, s.height, s.height),
                            width=Dim(s.width, s.width, s.width), refs=refs,
                            seq=default_seq(config, refs), cfg=True)


# --- profiles.yaml ----------------------------------------------------------------------


def load_shapes(path: str | os.PathLike | None, config: CinemaConfig) -> DeploymentShapes:
    """Parse `profiles.yaml` (None: the preset's defaults) and check it against `config`."""
    if path is None:
        return default_shapes(config)
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    return shapes_from_dict(data or {}, config, source=str(path))


def shapes_from_dict(data: Any, config: CinemaConfig, source: str = "") -> DeploymentShapes:
    """Shapes from a parsed profile mapping; `source` (the yaml path) prefixes errors."""
    where = source or "profile"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of {list(YAML_KEYS)}, "
                         f"got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(YAML_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {list(YAML_KEYS)}")
    preset = data.get("preset")
    if preset is not None and preset != config.name:
        raise ValueError(f"{where}: preset {preset!r} does not match the exported model's "
                         f"preset {config.name!r}; fix `preset:` or remove it")
    cfg = data.get("cfg", True)
    if not isinstance(cfg, bool):
        raise ValueError(f"{where}: cfg={cfg!r} must be true or false")
    defaults = default_shapes(config)
    dims = {k: _parse_dim(data[k], k, where) if k in data else getattr(defaults, k)
            for k in DIM_KEYS}
    if "seq" not in data and "refs" in data:
        dims["seq"] = default_seq(config, dims["refs"])  # image tokens follow refs
    shapes = DeploymentShapes(**dims, cfg=cfg, source=source)
    check_shapes(shapes, config)
    return shapes


def _parse_dim(value: Any, key: str, where: str) -> Dim:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {key}={value!r} must be an int or {{min, opt, max}}")
    if isinstance(value, int):
        value = {"min": value, "opt": value, "max": value}
    if not isinstance(value, dict) or set(value) != set(LEVELS):
        raise ValueError(f"{where}: {key} must be an int or a mapping with exactly the keys "
                         f"min, opt, max; got {value!r}")
    for level in LEVELS:
        v = value[level]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {key}.{level}={v!r} must be a positive integer")
    if not value["min"] <= value["opt"] <= value["max"]:
        raise ValueError(f"{where}: {key} needs min <= opt <= max, got "
                         f"{value['min']}, {value['opt']}, {value['max']}")
    return Dim(value["min"], value["opt"], value["max"])


def check_shapes(shapes: DeploymentShapes, config: CinemaConfig) -> None:
    """Every level of every video dim must be a size the models accept."""
    where = shapes.source or "profile"
    multiple = VAE_SPATIAL * config.dit.patch_size[1]
    for level in LEVELS:
        frames = getattr(shapes.frames, level)
        try:
            latent_frames(frames)
        except ValueError as error:
            raise ValueError(f"{where}: frames.{level}: {error}") from None
        for key in ("height", "width"):
            value = getattr(getattr(shapes, key), level)
            if value % multiple:
                raise ValueError(f"{where}: {key}.{level}={value} must be a multiple of "
                                 f"{multiple} (VAE {VAE_SPATIAL}x times DiT patch)")
    max_refs = min(config.mllm.max_refs, config.dit.max_refs)
    if shapes.refs.max > max_refs:
        raise ValueError(f"{where}: refs.max={shapes.refs.max} exceeds the model's "
                         f"max_refs={max_refs}")


# --- per-stage profiles -----------------------------------------------------------------


def request_at(shapes: DeploymentShapes, config: CinemaConfig, level: str) -> Request:
    """The request sizes of `shapes` at `level` (min, opt or max). Its min has no images
    (the negative prompt has none; the MLLM vision graph then plans one of the smallest)
    and no CFG doubling (a caller without CFG still fits the DiT)."""
    at = {k: getattr(getattr(shapes, k), level) for k in DIM_KEYS}
    low = level == "min"
    m = config.mllm
    return Request(**at, images=0 if low else at["batch"] * at["refs"],
                   image_pixels=m.min_pixels if low else m.max_pixels,
                   cfg=shapes.cfg and not low)


def profiles_for(stage_spec: StageSpec, shapes: DeploymentShapes,
                 config: CinemaConfig) -> dict[str, Profile]:
    """{input name: (min, opt, max) shape} for one graph (or stage), in input order."""
    low, opt, high = (lookup(stage_spec.name).symbols(request_at(shapes, config, level), config)
                      for level in LEVELS)
    return {spec.name: (resolve(spec, low), resolve(spec, opt), resolve(spec, high))
            for spec in stage_spec.inputs}
