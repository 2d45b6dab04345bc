"""The VAE decoder (models/vae.py): denoised latents to the video's frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .specs import StageSpec, f32
from .stage import Case, Request, Stage, video_cases, video_symbols

if TYPE_CHECKING:
    from torch import nn

    from .presets import CinemaConfig


class VAEDecoderStage(Stage):
    name = "vae_decoder"
    part, submodule = "vae", "decoder"
    weights_entry = "vae.safetensors"

    def spec(self, config: CinemaConfig) -> StageSpec:
        C = config.vae.latent_channels
        return StageSpec(self.name, (
            f32("latents", ("batch", C, "lframes", "lheight", "lwidth")),
        ), (
            f32("video", ("batch", 3, "frames", "height", "width")),
        ))

    def new_part(self, config: CinemaConfig) -> nn.Module:
        from .vae import VideoVAE

        return VideoVAE(config.vae)

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        example, one, two = video_cases(config)
        return example, (one, two)

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        return {**video_symbols(config, request), "batch": request.batch}


VAE_DECODER = VAEDecoderStage()
