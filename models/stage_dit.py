"""The DiT (models/dit.py): one rectified-flow step, the CFG pair as one batch of 2. Called
once per denoising step, so it gets CUDA graphs and the benchmarks' FP8 variant."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .precision import Precision
from .specs import StageSpec, f32
from .stage import Case, Recipe, Request, Stage, video_cases, video_symbols

if TYPE_CHECKING:
    from torch import nn

    from .factory import CinemaModels
    from .presets import CinemaConfig

# the attention backend of the graph with TensorRT plugin nodes: the Triton kernel without
# the fused Q/K prologue (the plugin has none; norm and RoPE stay in the graph)
PLUGIN_ATTENTION_BACKEND = "triton_unfused"


class DiTStage(Stage):
    name = "dit"
    part = "dit"
    weights_entry = "dit.safetensors"
    per_step = True
    attention_plugin = True
    depth = ("dit", "depth")
    recipes = {Precision.FP8: Recipe(
        exclude=(r"patch_embed", r"text_proj", r"time_mlp\..*", r".*modulation", r"proj_out"),
        min_cosine=0.999,
        why="patchify/text embedding, timestep MLP, adaLN modulation and the final "
            "projection stay fp32 (ModelOpt's DiT recipe; they are <1% of the FLOPs)")}

    def spec(self, config: CinemaConfig) -> StageSpec:
        d, C = config.dit, config.vae.latent_channels
        return StageSpec(self.name, (
            f32("latents", ("batch", C, "lframes", "lheight", "lwidth")),
            f32("timestep", ("batch",)),
            f32("text_states", ("batch", d.text_len, d.text_dim)),
            f32("ref_latents", ("batch", "refs", C, "lheight", "lwidth")),
        ), (
            f32("velocity", ("batch", C, "lframes", "lheight", "lwidth")),
        ))

    def module(self, models: CinemaModels, plugin: bool = False) -> nn.Module:
        """`plugin`: a twin of `models.dit` sharing its weights that attends with
        PLUGIN_ATTENTION_BACKEND (`models.dit` itself is left as it is)."""
        return models.dit.with_attention_backend(PLUGIN_ATTENTION_BACKEND) if plugin \
            else models.dit

    def new_part(self, config: CinemaConfig) -> nn.Module:
        from .dit import CinemaDiT

        return CinemaDiT(config.dit)

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        example, one, two = video_cases(config)
        # every check is a batch of distinct rows, as a CFG pair is (cond, uncond differ
        # in text and references), and the second has K=3 distinct references: a graph
        # that shares one branch's text or sees only the first reference fails
        return example, (one, {**two, "batch": 3})

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        # CFG's two halves are one batch (a profile's min stays 1x: no CFG still fits)
        return {**video_symbols(config, request),
                "batch": 2 * request.batch if request.cfg else request.batch}


DIT = DiTStage()
