"""The MLLM (Qwen2-VL, models/mllm.py), exported as two graphs that its glue joins back into
the stage's contract (models/mllm_split.py: why the split, and the glue)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .precision import INT4_WEIGHTS, INT8_WEIGHTS, Precision
from .specs import StageSpec, TensorSpec, f32, i64, image_patches
from .stage import Case, Graph, Recipe, Request, Stage, TextGraph, text_symbols

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .factory import CinemaModels
    from .presets import CinemaConfig
    from .runner import Runner


def _patch_dim(config: CinemaConfig) -> int:
    m = config.mllm  # a flattened patch: 3 channels x temporal x spatial patch
    return 3 * m.temporal_patch_size * m.patch_size ** 2


def _pixels(config: CinemaConfig) -> TensorSpec:
    return f32("pixel_values", ("patches", _patch_dim(config)))


class MLLMVisionGraph(Graph):
    """The vision tower on flat patches (mllm_split.VisionTower)."""

    name = "mllm_vision"
    depth = ("mllm", "vision_depth")

    def spec(self, config: CinemaConfig) -> StageSpec:
        m = config.mllm
        head_dim = m.vision_embed_dim // m.vision_heads
        return StageSpec(self.name, (
            _pixels(config),
            f32("rotary_cos", ("patches", head_dim)),
            f32("rotary_sin", ("patches", head_dim)),
            i64("segment_ids", ("patches",)),
        ), (
            # patches / spatial_merge_size**2 rows, in the processor's patch order
            f32("image_embeds", ("image_tokens", m.hidden_size)),
        ))

    def module(self, models: CinemaModels, plugin: bool = False) -> nn.Module:
        from .mllm_split import VisionTower

        return VisionTower(models.mllm.model.visual)

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        # image grids in patches; h and w must be multiples of the spatial merge size
        m = config.mllm.spatial_merge_size
        return ({"images": 2, "grid_h": 2 * m, "grid_w": 3 * m},
                ({"images": 1, "grid_h": 2 * m, "grid_w": 2 * m},
                 {"images": 3, "grid_h": 3 * m, "grid_w": 2 * m}))

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        # only called with images: at least one (a profile's min: one of the smallest)
        patches = max(request.images, 1) * image_patches(config, request.image_pixels)
        return {"patches": patches,
                "image_tokens": patches // config.mllm.spatial_merge_size ** 2}

    def sample_inputs(self, config: CinemaConfig, case: Case, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
        """Random pixels of `case["images"]` images of grid_h x grid_w patches, and the side
        inputs transformers derives from them (rotary tables, segment ids)."""
        import torch

        from .mllm import build_hf_config
        from .mllm_split import vision_inputs

        generator = torch.Generator().manual_seed(seed)
        grid = torch.tensor([[1, case["grid_h"], case["grid_w"]]] * case["images"])  # (K, 3)
        pixels = torch.randn(int(grid.prod(-1).sum()), _patch_dim(config), generator=generator)
        return vision_inputs(build_hf_config(config.mllm).vision_config, pixels, grid)


# an LM head's errors land directly on the logits; this graph ends at the final norm, so
# the pattern only matters to a graph that has one
_LM_HEAD = (r"(.*\.)?lm_head",)
_WEIGHT_ONLY_WHY = ("the text half is the pipeline's largest weights (12.2 GiB fp16 at "
                    "paper scale), read once per prefill; FP8 fails its gate at paper width")


class MLLMTextGraph(TextGraph):
    """The LLM prefill from inputs_embeds (mllm_split.TextPrefill); holds the glue."""

    name = "mllm_text"
    depth = ("mllm", "num_layers")
    recipes = {Precision.FP8: Recipe(
        exclude=(), min_cosine=0.999,
        why="all attention and MLP projections; the token embedding is a gather outside the "
            "graph and the norms are not Linear")}
    # Floors of the weight-only gates (the gate itself is relative to torch's own rounding,
    # export/check.py WEIGHT_ONLY_ERROR_FACTOR): cosine of the hidden states to torch fp32,
    # twice the worst measured 1 - cosine (benchmarks/results/cpu-2core-weight-only-
    # 20261206.md: paper width, random weights, INT4 RTN block 128 0.91923, INT8 0.99933;
    # random Gaussian weights are INT4's worst case, the tiny and trained models score
    # 0.997). A floor only says the graph is not broken.
    weight_only = {
        INT4_WEIGHTS: Recipe(exclude=_LM_HEAD, min_cosine=0.838, why=_WEIGHT_ONLY_WHY),
        INT8_WEIGHTS: Recipe(exclude=_LM_HEAD, min_cosine=0.9986, why=_WEIGHT_ONLY_WHY)}

    def spec(self, config: CinemaConfig) -> StageSpec:
        D = config.mllm.hidden_size
        return StageSpec(self.name, (
            f32("inputs_embeds", ("batch", "seq", D)),
            i64("attention_mask", ("batch", "seq")),
            i64("position_ids", (3, "batch", "seq")),
        ), (
            f32("hidden_states", ("batch", "seq", D)),
        ))

    def module(self, models: CinemaModels, plugin: bool = False) -> nn.Module:
        from .mllm_split import TextPrefill

        return TextPrefill(models.mllm.model.language_model)

    def save_glue(self, models: CinemaModels, folder: Path) -> dict[str, str]:
        from .mllm_split import save_glue

        return save_glue(models.mllm, folder)

    def calibration_batches(self, models: CinemaModels, count: int = 4
                            ) -> list[dict[str, Any]]:
        """Prompts of 128 random in-vocabulary tokens: their embedding rows are what the
        glue feeds the graph (sample inputs are Gaussian, unlike any embedding)."""
        from .mllm_split import text_calibration

        embed = models.mllm.model.language_model.embed_tokens.weight.detach()
        return [text_calibration(embed, 1, 128, seed=seed) for seed in range(count)]


MLLM_VISION, MLLM_TEXT = MLLMVisionGraph(), MLLMTextGraph()


class MLLMStage(Stage):
    """Prompt + reference images -> last hidden states, as its vision and text graphs."""

    name = "mllm"
    part = "mllm"
    weights_entry = "mllm"  # a local Hugging Face folder: weights and processor
    encodes = True
    released_after_encoding = True
    glue = MLLM_TEXT.name

    @property
    def graphs(self) -> tuple[Graph, ...]:
        return (MLLM_VISION, MLLM_TEXT)

    def spec(self, config: CinemaConfig) -> StageSpec:
        return StageSpec(self.name, (
            i64("input_ids", ("batch", "seq")),
            i64("attention_mask", ("batch", "seq")),
            _pixels(config),
            i64("image_grid_thw", ("images", 3)),
        ), (
            f32("hidden_states", ("batch", "seq", config.mllm.hidden_size)),
        ))

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        return text_symbols(request, config)

    def load_part(self, folder: str | os.PathLike, config: CinemaConfig) -> Any:
        from .mllm import load_mllm

        return load_mllm(Path(folder) / self.weights_entry, config.mllm)[0]

    def save(self, models: CinemaModels, folder: Path) -> None:
        from .mllm import save_mllm

        save_mllm(models.mllm, models.processor, folder / self.weights_entry)

    def compose(self, runners: Mapping[str, Runner], glue: str | os.PathLike | None = None
                ) -> Runner:
        from .mllm_split import load_glue
        from .runner import FunctionRunner

        if glue is None:
            raise ValueError(f"{self.name} is {' + '.join(g.name for g in self.graphs)}: "
                             f"their runners are joined by the glue in the {self.glue} export "
                             f"folder; pass it (the ONNX folder)")
        split = load_glue(glue)
        vision, text = runners[MLLM_VISION.name], runners[MLLM_TEXT.name]
        return FunctionRunner(self.name, lambda inputs: split.run(vision, text, inputs))


MLLM = MLLMStage()
