"""What each exported stage is: module, I/O spec, example shapes, check shapes, tolerance.

Every shape used here is derived from the config (patch sizes, VAE factors, max refs), so
the same definitions serve tiny, small and cinema. Example shapes use distinct values that
are not 0 or 1, because torch.export specialises a dimension whose example is 0 or 1 and
may tie together dimensions whose examples are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from cinema_trt.models.presets import VAE_SPATIAL, VAE_TEMPORAL, CinemaConfig
from cinema_trt.models.specs import StageSpec, mllm_split_specs, resolve, stage_specs
from cinema_trt.models.stages import GRAPHS, MLLM_TEXT, MLLM_VISION, STAGE_ALIASES

from .mllm_split import split_modules, vision_inputs

if TYPE_CHECKING:
    from cinema_trt.models.factory import CinemaModels

EXPORT_STAGES = GRAPHS  # the registry's graphs (models/stages.py); aliases: STAGE_ALIASES

# max |ORT - torch| / max |torch| allowed for fp32 graphs: fp32 rounding differs only in op
# order and fusions (~1e-6 relative at these depths), so 1e-4 leaves 100x headroom and
# still catches any real mismatch (a wrong mask or rope costs > 1e-2)
FP32_TOLERANCE = 1e-4
# the DiT attention backend whose graph carries TensorRT plugin nodes: the Triton kernel
# without the fused Q/K prologue (the plugin has none; norm and RoPE stay in the graph)
PLUGIN_ATTENTION_BACKEND = "triton_unfused"

Case = dict[str, int]  # values of a stage's symbolic dims (+ "images"/"grid_*" for vision)


@dataclass(frozen=True)
class StageExport:
    """One graph to export: the module, its spec, the traced example and the check cases."""

    spec: StageSpec
    module: nn.Module  # forward's parameters are named and ordered as spec.inputs
    example: Case
    checks: tuple[Case, ...]
    tolerance: float = FP32_TOLERANCE
    # attention as TensorRT plugin nodes (trace_to_onnx(..., attention_plugin=True)): only
    # TensorRT runs the graph, so it cannot be checked with ONNX Runtime
    attention_plugin: bool = False


def resolve_stages(stages: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Expand aliases, drop duplicates, keep pipeline order; ValueError for unknown names."""
    if not stages:
        return EXPORT_STAGES
    wanted: set[str] = set()
    for stage in stages:
        if stage in STAGE_ALIASES:
            wanted.update(STAGE_ALIASES[stage])
        elif stage in EXPORT_STAGES:
            wanted.add(stage)
        else:
            raise ValueError(f"unknown stage {stage!r}; choose from "
                             f"{list(EXPORT_STAGES) + sorted(STAGE_ALIASES)}")
    return tuple(s for s in EXPORT_STAGES if s in wanted)


def export_specs(config: CinemaConfig) -> dict[str, StageSpec]:
    """Specs of every exportable graph: models/specs.py with a split stage's halves."""
    specs = {k: v for k, v in stage_specs(config).items() if k not in STAGE_ALIASES}
    return {**mllm_split_specs(config), **specs}


def _video_cases(config: CinemaConfig) -> tuple[Case, Case, Case]:
    """(example, check 1, check 2) latent dims valid for the DiT's patch size."""
    pt, ph, pw = config.dit.patch_size
    refs = config.dit.max_refs
    example = {"batch": 2, "refs": min(3, refs), "lframes": 5 * pt, "lheight": 3 * ph,
               "lwidth": 4 * pw}
    # K=1 with 5 frames, then K=3 (or max) with 9 frames and a transposed aspect ratio
    one = {"batch": 2, "refs": 1, "lframes": pt * (1 + 5 // VAE_TEMPORAL), "lheight": 2 * ph,
           "lwidth": 3 * pw}
    two = {"batch": 1, "refs": min(3, refs), "lframes": pt * (1 + 9 // VAE_TEMPORAL),
           "lheight": 3 * ph, "lwidth": 2 * pw}
    return example, one, two


def _with_pixels(case: Case) -> Case:
    """Add the pixel-space symbols of a latent case (causal VAE: frames = 1 + 4 (T - 1))."""
    return {**case, "frames": 1 + VAE_TEMPORAL * (case["lframes"] - 1),
            "height": VAE_SPATIAL * case["lheight"], "width": VAE_SPATIAL * case["lwidth"]}


def stage_cases(config: CinemaConfig, stage: str) -> tuple[Case, tuple[Case, ...]]:
    """(example, checks) for `stage`; checks cover two different dynamic shapes."""
    if stage in ("dit", "vae_decoder", "vae_encoder"):
        example, one, two = (_with_pixels(c) for c in _video_cases(config))
        if stage == "vae_encoder":
            # references are encoded as single frames: K images, frames=1
            one = {**one, "batch": 3, "lframes": 1, "frames": 1}
        if stage == "dit":
            # every DiT check is a batch of distinct rows, as a CFG pair is (cond, uncond
            # differ in text and references), and the second has K=3 distinct references:
            # a graph that shares one branch's text or sees only the first reference fails
            two = {**two, "batch": 3}
        return example, (one, two)
    if stage == MLLM_VISION:
        # grids in patches; h and w must be multiples of the spatial merge size
        m = config.mllm.spatial_merge_size
        return ({"images": 2, "grid_h": 2 * m, "grid_w": 3 * m},
                ({"images": 1, "grid_h": 2 * m, "grid_w": 2 * m},
                 {"images": 3, "grid_h": 3 * m, "grid_w": 2 * m}))
    if stage in (MLLM_TEXT, "connector"):
        return {"batch": 2, "seq": 37}, ({"batch": 1, "seq": 23}, {"batch": 3, "seq": 61})
    raise ValueError(f"unknown stage {stage!r}; choose from {list(EXPORT_STAGES)}")


def stage_exports(models: CinemaModels, stages: tuple[str, ...],
                  attention_plugin: bool = False) -> dict[str, StageExport]:
    """`StageExport`s for `stages` of a `CinemaModels` (models/factory.py).

    attention_plugin: export the DiT's attention as TensorRT plugin nodes, traced from a
    twin of `models.dit` that shares its weights and attends with PLUGIN_ATTENTION_BACKEND
    (`models.dit` itself is left as it is). Other stages do not use the DiT's attention.
    """
    specs = export_specs(models.config)
    modules = {"connector": models.aligner, "vae_encoder": models.vae.encoder,
               "dit": models.dit, "vae_decoder": models.vae.decoder}
    if attention_plugin and "dit" in stages:
        modules["dit"] = models.dit.with_attention_backend(PLUGIN_ATTENTION_BACKEND)
    if any(s.startswith("mllm_") for s in stages):
        modules.update(split_modules(models.mllm))
    exports = {}
    for stage in stages:
        example, checks = stage_cases(models.config, stage)
        exports[stage] = StageExport(specs[stage], modules[stage].eval(), example, checks,
                                     attention_plugin=attention_plugin and stage == "dit")
    return exports


# --- sample inputs ------------------------------------------------------------------------


class InputSource(Protocol):
    """What `sample_inputs` reads of a `CinemaModels`: the config, and (for mllm_vision's
    rotary tables) the HF model's config as `mllm.config`. No weights are needed."""

    @property
    def config(self) -> CinemaConfig: ...

    @property
    def mllm(self) -> Any: ...


def _vision_inputs(models: InputSource, case: Case,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    m = models.config.mllm
    grid = torch.tensor([[1, case["grid_h"], case["grid_w"]]] * case["images"])  # (K, 3)
    patches = int(grid.prod(-1).sum())
    patch_dim = 3 * m.temporal_patch_size * m.patch_size ** 2
    pixels = torch.randn(patches, patch_dim, generator=generator)
    return vision_inputs(models.mllm.config.vision_config, pixels, grid)


def _padding_mask(batch: int, seq: int) -> torch.Tensor:
    """(B, S) int64: sample 0 unpadded, odd samples masked from token 1 on (left padding
    behind one leading token), even samples 2.. right-padded; every row keeps at least
    half its tokens.

    Both kinds on purpose: a causal LM's valid tokens never see right padding, so only a
    masked span before valid tokens tests its mask (the connector's bidirectional pooling
    sees both). The leading valid token keeps every query row one key to attend to: a
    fully masked row (pure left padding) is undefined, and runtimes fill it differently.
    """
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(1, batch):
        pad = (seq * b) // (2 * batch)
        if b % 2:
            mask[b, 1:1 + pad] = 0
        else:
            mask[b, seq - pad:] = 0
    return mask


def _text_positions(batch: int, seq: int) -> torch.Tensor:
    """(3, B, S) M-RoPE ids laid out as Qwen2-VL's get_rope_index does for a prompt with one
    image: text positions on all three rows, then an image span whose temporal row stays
    put while the height and width rows walk its grid, then text again from past the
    grid. Each sample's image sits elsewhere and has another grid, so a graph that reads
    only the text row (or treats the rows alike) is off by far more than rounding."""
    positions = torch.arange(seq).expand(3, batch, seq).clone()
    for b in range(batch):
        if seq < 8 + 4 * b:  # too short to hold an image span: text only
            continue
        start, width = seq // 4 + b, 2 + b % 3
        rows = max(1, (seq // 2) // width)
        tokens = rows * width  # image tokens, in raster order
        end = start + tokens
        text = torch.arange(start)
        grid = torch.arange(tokens)
        after = start + max(rows, width) + torch.arange(seq - end)
        positions[0, b] = torch.cat([text, torch.full((tokens,), start), after])
        positions[1, b] = torch.cat([text, start + grid // width, after])
        positions[2, b] = torch.cat([text, start + grid % width, after])
    return positions


def sample_inputs(models: InputSource, stage: str, case: Case,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic, realistic inputs for `stage` at the shape `case`."""
    generator = torch.Generator().manual_seed(seed)
    if stage == MLLM_VISION:
        return _vision_inputs(models, case, generator)
    spec = export_specs(models.config)[stage]
    inputs = {}
    for t in spec.inputs:
        shape = resolve(t, case)
        if t.name == "attention_mask":
            inputs[t.name] = _padding_mask(*shape)
        elif t.name == "position_ids":
            inputs[t.name] = _text_positions(shape[1], shape[2])
        elif t.name == "timestep":
            inputs[t.name] = torch.rand(shape, generator=generator) * 1000.0
        elif t.name == "video":
            inputs[t.name] = torch.rand(shape, generator=generator) * 2.0 - 1.0  # in [-1, 1]
        else:
            inputs[t.name] = torch.randn(shape, generator=generator)
    return inputs
