"""Spatial tiling of the VAE decode: overlapping latent tiles, seams blended in pixels.

For sizes where even one latent frame per chunk needs too much activation memory: the
latents are cut into tiles that overlap by `overlap` latent pixels, each tile is decoded on
its own (chunk by chunk, with its own causal state: models/vae_chunks.py), and the tiles'
pixels are averaged with weights that hand over from one tile to the next across the
middle half of every overlap, so no tile edge shows as a step.

Not exact, unlike chunking, for two reasons. (1) Each tile sees zeros past its edges where
the full frame has neighbours; that border effect fades with distance from the edge, so
the blend gives a tile no weight over the outer quarter of each overlap (measured with
the norms' statistics taken out: 3-4% of the output scale at an overlap of 4 latent
pixels, under 0.1% at 8). (2) Each tile normalises over its own pixels (FrameGroupNorm's
statistics are per frame, over the whole frame): what remains, 10-25% of the scale on the
tiny preset's random weights (tests/models/test_vae_tiles.py measures and gates it). The
blend is what hides (2) at the seams: a plain cut at the middle of the overlap would show
each tile's own normalisation as a step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .presets import VAE_SPATIAL, Tiling
from .vae import VAEDecoder
from .vae_chunks import DecoderStep, StepFn, iter_chunks

__all__ = ["Tiling", "decode_tiles", "iter_decode_tiles", "iter_tiles"]


def _ramp(start: int, length: int, size: int, overlap: int) -> torch.Tensor:
    """Blend weight along one axis of a tile covering [start, start + length) of `size`
    pixels whose neighbours overlap it by `overlap` pixels: 0 over the outer quarter of
    each shared side (a tile's own border, where its zero padding and missing neighbours
    distort it most), rising linearly across the middle half, 1 beyond; 1 on the frame's
    own edges. (length,) float32."""
    weight = torch.ones(length)
    distance = torch.arange(length, dtype=torch.float32) + 0.5  # from this tile's start
    rise = ((distance - overlap / 4) / max(overlap / 2, 1.0)).clamp(0.0, 1.0)
    if start > 0:
        weight = torch.minimum(weight, rise)
    if start + length < size:
        weight = torch.minimum(weight, rise.flip(0))
    return weight


@dataclass(frozen=True)
class _Tile:
    rows: slice  # latent pixels
    cols: slice
    weight: torch.Tensor  # (H_tile, W_tile) pixels

    def pixels(self) -> tuple[slice, slice]:
        return (slice(self.rows.start * VAE_SPATIAL, self.rows.stop * VAE_SPATIAL),
                slice(self.cols.start * VAE_SPATIAL, self.cols.stop * VAE_SPATIAL))


def _tiles(tiling: Tiling, lheight: int, lwidth: int) -> list[_Tile]:
    overlap = tiling.overlap * VAE_SPATIAL
    tiles = []
    for top in tiling.starts(lheight):
        rows = slice(top, min(top + tiling.tile, lheight))
        for left in tiling.starts(lwidth):
            cols = slice(left, min(left + tiling.tile, lwidth))
            weight = torch.outer(
                _ramp(rows.start * VAE_SPATIAL, (rows.stop - rows.start) * VAE_SPATIAL,
                      lheight * VAE_SPATIAL, overlap),
                _ramp(cols.start * VAE_SPATIAL, (cols.stop - cols.start) * VAE_SPATIAL,
                      lwidth * VAE_SPATIAL, overlap))
            tiles.append(_Tile(rows, cols, weight))
    return tiles


def iter_tiles(step: StepFn, latents: torch.Tensor, tiling: Tiling, chunk: int,
               states: tuple[torch.Tensor, ...]) -> Iterator[torch.Tensor]:
    """Yield the tiled decode of `latents` (B, C, T, h, w) chunk by chunk through `step`
    (any runner's step graph: models/vae_chunks.py StepFn), time-major: for each chunk of
    `chunk` latent frames, every tile in turn, each tile's causal states carried from its
    own previous chunk, so a chunk's frames exist as soon as its tiles are decoded.
    `states`: the zero states of one tile (`Tiling.size`), which the first chunk ignores."""
    _, _, _, lh, lw = latents.shape
    tiles = _tiles(tiling, lh, lw)
    total = torch.zeros(lh * VAE_SPATIAL, lw * VAE_SPATIAL)
    for tile in tiles:
        total[tile.pixels()] += tile.weight
    if not bool((total > 0).all()):
        raise RuntimeError(f"{tiling} leaves pixels of a {lh}x{lw} latent frame without a tile")
    # one generator per tile, each holding its tile's states; zip pulls one chunk of each
    streams = [iter_chunks(step, latents[:, :, :, tile.rows, tile.cols], chunk, states)
               for tile in tiles]
    for pieces in zip(*streams, strict=True):  # one chunk of every tile
        out = pieces[0].new_zeros(*pieces[0].shape[:3], lh * VAE_SPATIAL, lw * VAE_SPATIAL)
        for tile, piece in zip(tiles, pieces, strict=True):
            out[..., tile.pixels()[0], tile.pixels()[1]] += piece * tile.weight.to(piece)
        yield out / total.to(out)


def iter_decode_tiles(decoder: VAEDecoder, latents: torch.Tensor, tiling: Tiling,
                      chunk: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the tiled decode of `latents` (B, C, T, h, w) chunk by chunk (`chunk` latent
    frames at a time; None: all at once) through the torch step module."""
    decoder.check_latents(latents)
    module = DecoderStep(decoder)

    def step(part: torch.Tensor, first: torch.Tensor, states: tuple[torch.Tensor, ...]):
        video, *next_states = module(part, first, *states)
        return video, tuple(next_states)

    lh, lw = tiling.size(*latents.shape[3:])
    states = module.initial_states(latents[:, :, :, :lh, :lw])
    return iter_tiles(step, latents, tiling, chunk or latents.shape[2], states)


def decode_tiles(decoder: VAEDecoder, latents: torch.Tensor, tiling: Tiling,
                 chunk: int | None = None) -> torch.Tensor:
    """The tiled decode of `latents`, (B, 3, 1 + 4(T - 1), 8h, 8w)."""
    return torch.cat(list(iter_decode_tiles(decoder, latents, tiling, chunk)), dim=2)
