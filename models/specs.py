"""One declarative I/O spec per stage: tensor names, dtypes and symbolic dims, written once.

The PyTorch modules' forward signatures, the ONNX dynamic axes, TensorRT profiles, Triton
`config.pbtxt` dims and sample inputs are all derived from these specs. A dim is an int
(fixed by the preset) or a symbol; `Dims` gives each symbol's min/opt/max.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .presets import CinemaConfig, latent_frames, latent_size
from .stages import MLLM_TEXT, MLLM_VISION, PIPELINE_STAGES


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    dims: tuple[int | str, ...]  # ints are fixed, strings are symbolic


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


STAGES = PIPELINE_STAGES  # the stage registry's order (models/stages.py)


def stage_specs(config: CinemaConfig) -> dict[str, StageSpec]:
    """Every stage's I/O for `config` (symbols: batch, seq, refs, frames, lframes, ...)."""
    m, a, v, d = config.mllm, config.aligner, config.vae, config.dit
    f32, i64 = torch.float32, torch.int64
    patch_dim = 3 * m.temporal_patch_size * m.patch_size ** 2
    C = v.latent_channels
    return {
        "mllm": StageSpec("mllm", (
            TensorSpec("input_ids", i64, ("batch", "seq")),
            TensorSpec("attention_mask", i64, ("batch", "seq")),
            TensorSpec("pixel_values", f32, ("patches", patch_dim)),
            TensorSpec("image_grid_thw", i64, ("images", 3)),
        ), (
            TensorSpec("hidden_states", f32, ("batch", "seq", m.hidden_size)),
        )),
        "connector": StageSpec("connector", (
            TensorSpec("hidden_states", f32, ("batch", "seq", a.in_dim)),
            TensorSpec("attention_mask", i64, ("batch", "seq")),
        ), (
            TensorSpec("text_states", f32, ("batch", a.num_queries, a.out_dim)),
        )),
        "vae_encoder": StageSpec("vae_encoder", (
            TensorSpec("video", f32, ("batch", 3, "frames", "height", "width")),
        ), (
            TensorSpec("latents", f32, ("batch", C, "lframes", "lheight", "lwidth")),
        )),
        "dit": StageSpec("dit", (
            TensorSpec("latents", f32, ("batch", C, "lframes", "lheight", "lwidth")),
            TensorSpec("timestep", f32, ("batch",)),
            TensorSpec("text_states", f32, ("batch", d.text_len, d.text_dim)),
            TensorSpec("ref_latents", f32, ("batch", "refs", C, "lheight", "lwidth")),
        ), (
            TensorSpec("velocity", f32, ("batch", C, "lframes", "lheight", "lwidth")),
        )),
        "vae_decoder": StageSpec("vae_decoder", (
            TensorSpec("latents", f32, ("batch", C, "lframes", "lheight", "lwidth")),
        ), (
            TensorSpec("video", f32, ("batch", 3, "frames", "height", "width")),
        )),
    }


def mllm_split_specs(config: CinemaConfig) -> dict[str, StageSpec]:
    """The MLLM as its two exportable graphs (models/stages.py; export/mllm_split.py joins
    them back into the "mllm" contract). Symbols: patches, image_tokens, batch, seq."""
    m = config.mllm
    f32, i64 = torch.float32, torch.int64
    pixels = stage_specs(config)["mllm"].inputs[2]  # ("patches", 3 * tp * ps * ps)
    head_dim = m.vision_embed_dim // m.vision_heads
    return {
        MLLM_VISION: StageSpec(MLLM_VISION, (
            pixels,
            TensorSpec("rotary_cos", f32, ("patches", head_dim)),
            TensorSpec("rotary_sin", f32, ("patches", head_dim)),
            TensorSpec("segment_ids", i64, ("patches",)),
        ), (
            # patches / spatial_merge_size**2 rows, in the processor's patch order
            TensorSpec("image_embeds", f32, ("image_tokens", m.hidden_size)),
        )),
        MLLM_TEXT: StageSpec(MLLM_TEXT, (
            TensorSpec("inputs_embeds", f32, ("batch", "seq", m.hidden_size)),
            TensorSpec("attention_mask", i64, ("batch", "seq")),
            TensorSpec("position_ids", i64, (3, "batch", "seq")),
        ), (
            TensorSpec("hidden_states", f32, ("batch", "seq", m.hidden_size)),
        )),
    }


@dataclass(frozen=True)
class Dim:
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self}")


def video_dims(config: CinemaConfig, frames: int, height: int, width: int,
               refs: int) -> dict[str, int]:
    """Concrete values of the video-related symbols for one request."""
    lh, lw = latent_size(height, width, config.dit)
    return {"frames": frames, "lframes": latent_frames(frames), "height": height,
            "width": width, "lheight": lh, "lwidth": lw, "refs": refs}


def resolve(spec: TensorSpec, values: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape of `spec` given values for its symbols."""
    missing = [d for d in spec.dims if isinstance(d, str) and d not in values]
    if missing:
        raise KeyError(f"{spec.name}: no value for dims {missing}")
    return tuple(d if isinstance(d, int) else values[d] for d in spec.dims)

