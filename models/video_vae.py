"""The VAE the pipeline calls: the encoder and decoder of models/vae.py together, decoding in
one shot, in chunks of latent frames (models/vae_chunks.py, exact) or in overlapping
spatial tiles (models/vae_tiles.py, approximate). A module of its own because chunking and
tiling drive the decoder of vae.py: vae.py cannot import them back.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .presets import VAEConfig
from .vae import VAEDecoder, VAEEncoder
from .vae_chunks import decode_chunks
from .vae_tiles import Tiling, decode_tiles

logger = logging.getLogger(__name__)


class VideoVAE(nn.Module):
    """Encoder and decoder together; `encode`/`decode` are the pipeline's entry points."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.encoder(video)

    def decode(self, latents: torch.Tensor, chunk: int | None = None,
               tiling: Tiling | None = None) -> torch.Tensor:
        """latents (B, C, 1 + k, h, w) -> video (B, 3, 1 + 4k, 8h, 8w).

        chunk: decode `chunk` latent frames at a time, carrying each causal conv's state
        (equal to the one-shot decode; activations bounded by the chunk). tiling: decode
        overlapping spatial tiles and blend the seams (approximate; see vae_tiles.py).
        """
        if tiling is not None:
            return decode_tiles(self.decoder, latents, tiling, chunk)
        if chunk is None:
            return self.decoder(latents)
        return decode_chunks(self.decoder, latents, chunk)


def create_vae(cfg: VAEConfig, seed: int = 0) -> VideoVAE:
    """A randomly initialised VAE, identical for identical (cfg, seed); the global RNG is
    left untouched. Default PyTorch conv init shrinks each conv's output variance (~1/3),
    which, with per-frame norms before every conv, keeps activations O(1) through the
    random network; nothing is zero-initialised, so outputs depend on every input."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VideoVAE(cfg)
    logger.debug("created VAE with %d parameters (seed %d)",
                 sum(p.numel() for p in vae.parameters()), seed)
    return vae.eval()
