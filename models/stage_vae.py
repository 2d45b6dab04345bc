"""The VAE (models/vae.py) as two stages, the halves of one VideoVAE in vae.safetensors: the
encoder takes each reference image as a one-frame video to latents; the decoder turns the
denoised latents into the video's frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .specs import StageSpec, TensorSpec, f32
from .stage import Case, Request, Stage, video_cases, video_symbols

if TYPE_CHECKING:
    from torch import nn

    from .presets import CinemaConfig


class _VAEStage(Stage):
    part = "vae"
    weights_entry = "vae.safetensors"

    def new_part(self, config: CinemaConfig) -> nn.Module:
        from .video_vae import VideoVAE

        return VideoVAE(config.vae)

    @staticmethod
    def _tensors(config: CinemaConfig) -> tuple[TensorSpec, TensorSpec]:
        """(video, latents): the pixels in [-1, 1] and their latents."""
        C = config.vae.latent_channels
        return (f32("video", ("batch", 3, "frames", "height", "width")),
                f32("latents", ("batch", C, "lframes", "lheight", "lwidth")))


class VAEEncoderStage(_VAEStage):
    name = "vae_encoder"
    submodule = "encoder"
    encodes = True

    def spec(self, config: CinemaConfig) -> StageSpec:
        video, latents = self._tensors(config)
        return StageSpec(self.name, (video,), (latents,))

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        example, one, two = video_cases(config)
        # references are encoded as single frames: K images, frames=1
        return example, ({**one, "batch": 3, "lframes": 1, "frames": 1}, two)

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        # every reference of every video is one single-frame video of the batch
        return {**video_symbols(config, request, frames=1),
                "batch": request.batch * request.refs}


class VAEDecoderStage(_VAEStage):
    name = "vae_decoder"
    submodule = "decoder"

    def spec(self, config: CinemaConfig) -> StageSpec:
        video, latents = self._tensors(config)
        return StageSpec(self.name, (latents,), (video,))

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        example, one, two = video_cases(config)
        return example, (one, two)

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        return {**video_symbols(config, request), "batch": request.batch}


VAE_ENCODER, VAE_DECODER = VAEEncoderStage(), VAEDecoderStage()
