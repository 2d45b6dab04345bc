"""Spatial tiling of the decode (models/vae_tiles.py): close to the untiled decode at the
measured level, composable with chunking, and a tiling bug fails the gate.

Two numbers per decode, both relative to the untiled output's scale (max |untiled|):
`error` = max |tiled - untiled|, and `seam` = the largest error of a horizontal or
vertical neighbour difference, which a step at a tile edge shows even where the values
themselves are off by as much elsewhere.

Measured on the tiny preset (seed 0 weights), latents 2 x 12 x 16, tiles of 8 with an
overlap of 4 (6 tiles), latent seeds 0 and 1: error 0.235 / 0.201, seam 0.186 / 0.168.
That much is each tile normalising over its own pixels (FrameGroupNorm): with the norms'
statistics taken out the same tiling is off by 0.032 / 0.043, and by 8e-4 at an overlap
of 8 on 24 x 32 latents (the border effect alone). Gates: error 0.3, seam 0.25. Bugs, same
cases: tiles cut at the middle of the overlap without blending, seam 0.54 / 0.38; tiles
decoded one latent pixel off their place, error > 0.5.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from cinema_trt.models import vae as vae_module
from cinema_trt.models import vae_tiles
from cinema_trt.models.vae_tiles import Tiling
from cinema_trt.models.video_vae import VideoVAE, create_vae

ERROR_GATE, SEAM_GATE = 0.3, 0.25
BORDER_GATE = 2e-3  # statistics-free decoder, overlap 8: measured 7e-4 / 8e-4
TILING = Tiling(tile=8, overlap=4)


@pytest.fixture(scope="module")
def vae(tiny_config) -> VideoVAE:
    return create_vae(tiny_config.vae, seed=0)


def latents(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def errors(out: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(error, seam) relative to the reference's scale."""
    scale = reference.abs().max()
    diff = out - reference
    seam = max(float(diff.diff(dim=3).abs().max()), float(diff.diff(dim=4).abs().max()))
    return float(diff.abs().max() / scale), seam / float(scale)


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_tiled_decode_is_within_the_measured_error(vae, seed):
    z = latents(2, 12, 16, seed)
    reference = vae.decode(z)
    tiled = vae.decode(z, tiling=TILING)
    assert tiled.shape == reference.shape
    error, seam = errors(tiled, reference)
    assert error <= ERROR_GATE and seam <= SEAM_GATE, (error, seam)


@torch.no_grad()
def test_tiles_compose_with_chunks_exactly(vae):
    """Chunking is exact per tile, so a chunked tiled decode is the one-shot tiled one."""
    z = latents(3, 8, 12, 0)
    whole = vae.decode(z, tiling=TILING)
    chunked = vae.decode(z, tiling=TILING, chunk=2)
    assert float((chunked - whole).abs().max() / whole.abs().max()) <= 1e-5


@torch.no_grad()
def test_one_tile_is_the_untiled_decode(vae):
    z = latents(2, 6, 8, 0)
    torch.testing.assert_close(vae.decode(z, tiling=Tiling(tile=8, overlap=2)), vae.decode(z),
                               atol=1e-5, rtol=0)


_ramp = vae_tiles._ramp
iter_chunks = vae_tiles.iter_chunks


def _hard_cut(start, length, size, overlap):
    """The bug: no blending, each pixel from the tile whose weight would be larger."""
    return (_ramp(start, length, size, overlap) >= 0.5).float()


def _misplaced(step, tile_latents, chunk, states):
    """The bug: each tile decoded from latents one pixel to the right of its place."""
    return iter_chunks(step, tile_latents.roll(1, dims=4), chunk, states)


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_tiling_bugs_fail_the_gate(vae, seed):
    z = latents(2, 12, 16, seed)
    reference = vae.decode(z)
    with mock.patch.object(vae_tiles, "_ramp", _hard_cut):
        _, seam = errors(vae.decode(z, tiling=TILING), reference)
    assert seam > SEAM_GATE
    with mock.patch.object(vae_tiles, "iter_chunks", _misplaced):
        error, _ = errors(vae.decode(z, tiling=TILING), reference)
    assert error > ERROR_GATE


def _statistics_free(self, x):
    """FrameGroupNorm without its statistics: a fixed affine map (same for every tile)."""
    return x * 0.5 * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


@pytest.mark.slow  # ~10-25 s on 2 shared cores
@torch.no_grad()
def test_without_norm_statistics_only_the_border_effect_remains(vae):
    """What the blend does about tile borders, isolated: with the norms' statistics taken
    out, an overlap of 8 latent pixels leaves the output within 2e-3 of untiled."""
    z = latents(1, 24, 32, 0)
    with mock.patch.object(vae_module.FrameGroupNorm, "forward", _statistics_free):
        error, _ = errors(vae.decode(z, tiling=Tiling(tile=16, overlap=8)), vae.decode(z))
    assert error <= BORDER_GATE


def test_tiling_validates_and_covers_every_pixel():
    with pytest.raises(ValueError, match="need 0 < overlap < tile"):
        Tiling(tile=4, overlap=4)
    tiling = Tiling(tile=8, overlap=3)
    for size in (1, 8, 9, 13, 30):
        starts = tiling.starts(size)
        assert starts[0] == 0 and starts[-1] + min(8, size) == size
        assert all(b - a <= 8 - 3 for a, b in zip(starts, starts[1:], strict=False))


def _stage_decode(vae, config, z):
    """The decoder stage's decode (the pipeline's, any runtime's) through a torch runner."""
    from cinema_trt.models.runner import TorchRunner
    from cinema_trt.models.stages import VAE_DECODER
    from cinema_trt.models.vae_chunks import DecoderStep

    runner = TorchRunner(VAE_DECODER.name, DecoderStep(vae.decoder),
                         VAE_DECODER.spec(config).output_names)
    return list(VAE_DECODER.decode(runner, z, config))


@torch.no_grad()
def test_the_runner_path_is_the_torch_tiled_decode_exactly(vae, tiny_config):
    """One code path (vae_tiles.iter_tiles over a step function): the stage's decode through
    a runner and VideoVAE.decode(tiling=...) do the same arithmetic, bit for bit, and the
    runner's decode yields one chunk at a time."""
    from cinema_trt.models.presets import Decoding

    z = latents(3, 12, 16, 2)
    config = Decoding(chunk=2, tile=8, overlap=4).apply(tiny_config)
    pieces = _stage_decode(vae, config, z)
    assert [p.shape[2] for p in pieces] == [1 + 4 * 1, 4]  # frame 0 + 1 latent, then 1 + pad
    assert torch.equal(torch.cat(pieces, dim=2), vae.decode(z, chunk=2, tiling=TILING))


@torch.no_grad()
def test_without_tiles_the_stage_decode_is_the_chunked_decode_bit_for_bit(vae, tiny_config):
    """decode_tiles=None (the default) takes the untiled path of before: whole frames per
    call, equal to VideoVAE.decode(chunk=...) exactly (no blend arithmetic on the way)."""
    from cinema_trt.models.presets import Decoding

    z = latents(3, 6, 10, 3)
    assert tiny_config.sampler.decode_tiles is None
    config = Decoding(chunk=2).apply(tiny_config)
    assert torch.equal(torch.cat(_stage_decode(vae, config, z), dim=2),
                       vae.decode(z, chunk=2))
