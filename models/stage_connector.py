"""The connector (AlignerNet, models/aligner.py): MLLM hidden states -> the DiT's text
features. One graph; FP8 recipe over its blocks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .precision import Precision
from .specs import StageSpec, f32, i64
from .stage import Recipe, Stage, TextGraph

if TYPE_CHECKING:
    from torch import nn

    from .presets import CinemaConfig


class ConnectorStage(TextGraph, Stage):
    name = "connector"
    part = "aligner"
    weights_entry = "connector.safetensors"
    encodes = True
    recipes = {Precision.FP8: Recipe(
        exclude=(r"input_proj", r"output_proj"), min_cosine=0.99,
        why="input projection (the MLLM-state embedding) and output projection to the T5 "
            "width stay fp32")}

    def spec(self, config: CinemaConfig) -> StageSpec:
        a = config.aligner
        return StageSpec(self.name, (
            f32("hidden_states", ("batch", "seq", a.in_dim)),
            i64("attention_mask", ("batch", "seq")),
        ), (
            f32("text_states", ("batch", a.num_queries, a.out_dim)),
        ))

    def new_part(self, config: CinemaConfig) -> nn.Module:
        from .aligner import AlignerNet

        return AlignerNet(config.aligner)


CONNECTOR = ConnectorStage()
