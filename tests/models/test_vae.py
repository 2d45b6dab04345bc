"""The 3D causal VAE: shapes, causality, image/video consistency, validation, determinism.

Tolerances: "unchanged" comparisons use atol=1e-5. The compared values are O(1) and come
from the same float32 arithmetic, but convolutions over a different number of frames may
sum in a different order, which moves float32 results by a few ulps (~1e-7 relative per
op over a dozen layers); 1e-5 leaves headroom while a real dependency moves values by
>1e-3, as the companion "does change" assertions check.
"""

from __future__ import annotations

import pytest
import torch

from cinema_trt.models.presets import VAEConfig
from cinema_trt.models.vae import VAEDecoder, VAEEncoder
from cinema_trt.models.video_vae import VideoVAE, create_vae

ATOL = 1e-5
CHANGED = 1e-3  # smallest max-abs difference accepted as "this input matters"


@pytest.fixture(scope="module")
def vae(tiny_config) -> VideoVAE:
    return create_vae(tiny_config.vae, seed=0)


def video(frames: int, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1


@pytest.mark.parametrize("height,width", [(32, 48), (64, 64)])
@pytest.mark.parametrize("frames", [1, 5, 9, 17])
@torch.no_grad()
def test_shapes_and_round_trip(vae, frames, height, width):
    x = video(frames, height, width)
    z = vae.encode(x)
    assert z.shape == (1, 16, 1 + (frames - 1) // 4, height // 8, width // 8)
    assert vae.decode(z).shape == x.shape


def test_public_modules(vae):
    assert isinstance(vae.encoder, VAEEncoder) and isinstance(vae.decoder, VAEDecoder)


@torch.no_grad()
def test_encoder_is_causal(vae):
    x = video(9)
    changed = x.clone()
    changed[:, :, 5] = -changed[:, :, 5]
    z, z_changed = vae.encode(x), vae.encode(changed)
    # latent frames 0 and 1 are computed from frames 0..4 only
    torch.testing.assert_close(z_changed[:, :, :2], z[:, :, :2], atol=ATOL, rtol=0)
    assert (z_changed[:, :, 2] - z[:, :, 2]).abs().max() > CHANGED


@torch.no_grad()
def test_decoder_is_causal(vae):
    z = vae.encode(video(9))
    changed = z.clone()
    changed[:, :, 2] = -changed[:, :, 2]
    out, out_changed = vae.decode(z), vae.decode(changed)
    # latent frame 2 decodes to frames 5..8; frames 0..4 come from latent frames 0..1
    torch.testing.assert_close(out_changed[:, :, :5], out[:, :, :5], atol=ATOL, rtol=0)
    assert (out_changed[:, :, 5:] - out[:, :, 5:]).abs().amax(dim=(0, 1, 3, 4)).min() > CHANGED


@torch.no_grad()
def test_single_image_is_first_latent_frame_of_video(vae):
    x = video(9, 32, 48)
    z_image = vae.encode(x[:, :, :1])
    assert z_image.shape[2] == 1
    torch.testing.assert_close(z_image, vae.encode(x)[:, :, :1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_batch_items_are_independent(vae):
    x = torch.cat([video(5, seed=1), video(5, seed=2)])
    z = vae.encode(x)
    torch.testing.assert_close(z[1:], vae.encode(x[1:]), atol=ATOL, rtol=0)
    torch.testing.assert_close(vae.decode(z)[:1], vae.decode(z[:1]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("frames", [0, 2, 6, 8])
def test_invalid_frames_raise(vae, frames):
    with pytest.raises(ValueError, match=f"frames={frames} must be 1 \\+ 4k"):
        vae.encode(torch.zeros(1, 3, frames, 32, 32))


@pytest.mark.parametrize("height,width,label", [(36, 32, "height=36"), (32, 20, "width=20")])
def test_invalid_size_raises(vae, height, width, label):
    with pytest.raises(ValueError, match=f"{label} must be a positive multiple of 8"):
        vae.encode(torch.zeros(1, 3, 5, height, width))


def test_invalid_channels_raise(vae):
    with pytest.raises(ValueError, match="must be \\(batch, 3, frames"):
        vae.encode(torch.zeros(1, 4, 5, 32, 32))
    with pytest.raises(ValueError, match="must be \\(batch, 16, lframes"):
        vae.decode(torch.zeros(1, 8, 2, 4, 4))


def test_invalid_config_raises():
    with pytest.raises(ValueError, match="spatial compression"):
        VideoVAE(VAEConfig(block_channels=(8, 16, 16), norm_groups=4))
    with pytest.raises(ValueError, match="temporal_down_levels"):
        VideoVAE(VAEConfig(block_channels=(8, 16, 16, 16), temporal_down_levels=(1,),
                           norm_groups=4))


@torch.no_grad()
def test_same_seed_same_model_and_global_rng_untouched(tiny_config):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = create_vae(tiny_config.vae, seed=0), create_vae(tiny_config.vae, seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    x = video(5)
    assert torch.equal(a.encode(x), b.encode(x))
    other = create_vae(tiny_config.vae, seed=1)
    assert (other.encode(x) - a.encode(x)).abs().max() > CHANGED


@torch.no_grad()
def test_untrained_decoder_is_order_one_and_input_dependent(vae):
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(1, 16, 3, 8, 8, generator=generator)
    z2 = torch.randn(1, 16, 3, 8, 8, generator=generator)
    out1, out2 = vae.decode(z1), vae.decode(z2)
    # O(1): not collapsed towards 0 and not exploding (pixels live in [-1, 1])
    assert 0.05 < out1.std() < 5.0
    assert (out1 - out2).abs().mean() > 0.01


def test_every_latent_element_reaches_the_output(vae):
    # a random projection of the output has a nonzero gradient wrt every latent element
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    probe = torch.randn(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    (vae.decode(z) * probe).sum().backward()
    assert (z.grad.abs() > 0).all()
