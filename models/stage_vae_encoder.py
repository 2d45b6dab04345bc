"""The VAE encoder (models/vae.py): each reference image, as a one-frame video, to latents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .specs import StageSpec, f32
from .stage import Case, Request, Stage, video_cases, video_symbols

if TYPE_CHECKING:
    from torch import nn

    from .presets import CinemaConfig


class VAEEncoderStage(Stage):
    name = "vae_encoder"
    part, submodule = "vae", "encoder"
    weights_entry = "vae.safetensors"
    encodes = True

    def spec(self, config: CinemaConfig) -> StageSpec:
        C = config.vae.latent_channels
        return StageSpec(self.name, (
            f32("video", ("batch", 3, "frames", "height", "width")),
        ), (
            f32("latents", ("batch", C, "lframes", "lheight", "lwidth")),
        ))

    def new_part(self, config: CinemaConfig) -> nn.Module:
        from .vae import VideoVAE

        return VideoVAE(config.vae)

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        example, one, two = video_cases(config)
        # references are encoded as single frames: K images, frames=1
        return example, ({**one, "batch": 3, "lframes": 1, "frames": 1}, two)

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        # every reference of every video is one single-frame video of the batch
        return {**video_symbols(config, request, frames=1),
                "batch": request.batch * request.refs}


VAE_ENCODER = VAEEncoderStage()
