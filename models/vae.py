"""3D causal video VAE (CogVideoX-style): 4x temporal, 8x8 spatial compression.

Causality is what lets one network encode both videos and single reference images:
every temporal conv pads only at the front (replicating frame 0), norms are per frame, and
temporal resampling keeps frame 0 alone. Frame t therefore never sees frames > t, and an
image (F=1) encodes to exactly the first latent frame of any video that starts with it.

Export notes: loops run over config values only (levels, layers), never over frames, and
resampling is written as reshape/expand so the frame count may stay a dynamic dimension.

Chunked decoding (models/vae_chunks.py) runs the same modules over a few latent frames at a
time: every causal conv and temporal upsample takes an optional `cache` that carries the
conv's last input frames from one chunk to the next. `VideoVAE` (models/video_vae.py) puts
the halves together and chooses one-shot, chunked or tiled decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .presets import VAE_SPATIAL, VAE_TEMPORAL, VAEConfig, latent_frames

if TYPE_CHECKING:
    from .vae_chunks import ConvCache

NORM_EPS = 1e-6


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame: a plain GroupNorm over (T, H, W) would let
    later frames shift the normalisation of earlier ones and break causality."""

    def __init__(self, groups: int, channels: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels={channels} must be divisible by norm_groups={groups}")
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T, H, W)
        per_group = x.shape[1] // self.groups
        g = x.unflatten(1, (self.groups, per_group))  # (B, G, C/G, T, H, W)
        # Statistics in fp32 so fp16 engines normalise like the fp32 reference, yet no
        # full-size tensor but the output: x is cast inside each reduction (one cast for
        # both made TensorRT-RTX keep an fp32 copy of x), the centred values exist only
        # inside the variance's reduction, and the output is x against per-channel
        # statistics (normalising the grouped view made copies of it). Cinema decoder at
        # 480 x 720: 1.8 GiB less activation (benchmarks/results/*-vae-chunks-*). In fp32
        # this is the same arithmetic as normalising the grouped view.
        mean = g.float().mean(dim=(2, 4, 5), keepdim=True)  # (B, G, 1, T, 1, 1)
        var = (g - mean.to(x.dtype)).float().square().mean(dim=(2, 4, 5), keepdim=True)

        def per_channel(stat: torch.Tensor) -> torch.Tensor:  # -> (B, C, T, 1, 1)
            return stat.expand(-1, -1, per_group, -1, -1, -1).flatten(1, 2).to(x.dtype)

        out = (x - per_channel(mean)) * per_channel(torch.rsqrt(var + NORM_EPS))
        return out * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


class Causal(nn.Module):
    """A layer whose output at frame t depends on earlier frames: its forward takes the
    chunked decode's `cache` (None: the whole video in one call)."""


class CausalConv3d(Causal):
    """3x3x3 conv that pads time only at the front with copies of frame 0 (spatial: zeros).
    In a chunked decode the pad is the previous chunk's last input frames instead."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3):
        super().__init__()
        self.time_pad = kernel - 1
        pad = kernel // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, padding=(0, pad, pad))

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None
                ) -> torch.Tensor:  # (B, C, T, H, W) -> (B, C', T, H, W)
        if self.time_pad:
            history = (first_frame_pad(x, self.time_pad) if cache is None
                       else cache.history(self, x))
            x = torch.cat([history, x], dim=2)
        return self.conv(x)


def first_frame_pad(x: torch.Tensor, frames: int) -> torch.Tensor:
    """The causal pad of a video's start: `frames` copies of frame 0, (B, C, frames, H, W)."""
    return x[:, :, :1].expand(-1, -1, frames, -1, -1)


class CausalSequential(nn.Sequential):
    """nn.Sequential that hands the chunk cache to its causal layers (same state_dict keys)."""

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, cache) if isinstance(layer, (Causal, CausalSequential)) else layer(x)
        return x


class ResBlock3d(Causal):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.skip = (nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


def temporal_downsample(x: torch.Tensor) -> torch.Tensor:
    """Keep frame 0 alone, average the rest in pairs: 1 + 2k -> 1 + k frames."""
    b, c, t, h, w = x.shape
    rest = x[:, :, 1:].reshape(b, c, (t - 1) // 2, 2, h, w).mean(dim=3)  # (B, C, k, H, W)
    return torch.cat([x[:, :, :1], rest], dim=2)


def temporal_upsample(x: torch.Tensor, keep_first: bool = True) -> torch.Tensor:
    """Keep frame 0 single, repeat the rest twice: 1 + k -> 1 + 2k frames.

    keep_first=False repeats every frame (k -> 2k), as a chunk after the first needs. The
    first chunk then carries one extra copy of frame 0, and every later layer maps copies
    of frame 0 to copies of its own frame 0 (per-frame ops, and a causal conv whose pad is
    frame 0 itself): the chunk's output is the one-shot output behind copies of frame 0,
    which the chunked decode drops (vae_chunks.FIRST_CHUNK_EXTRA_FRAMES)."""
    start = 1 if keep_first else 0
    rest = x[:, :, start:].unsqueeze(3).expand(-1, -1, -1, 2, -1, -1).flatten(2, 3)
    return torch.cat([x[:, :, :1], rest], dim=2) if keep_first else rest  # (B, C, T', H, W)


class Downsample(nn.Module):
    """Per-frame strided conv halves H and W (a kernel of 1 in time is trivially causal);
    optionally followed by the causal temporal 2x downsample."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return temporal_downsample(x) if self.temporal else x


class Upsample(Causal):
    """Optional causal temporal 2x upsample, then nearest 2x in H, W and a per-frame conv."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        if self.temporal:
            x = temporal_upsample(x, keep_first=cache is None)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return self.conv(x)


def _check_config(cfg: VAEConfig) -> None:
    levels = len(cfg.block_channels)
    if 2 ** (levels - 1) != VAE_SPATIAL:
        raise ValueError(f"block_channels has {levels} levels; {VAE_SPATIAL}x spatial compression "
                         f"needs {VAE_SPATIAL.bit_length()} (one 2x downsample between levels)")
    down = sorted(set(cfg.temporal_down_levels))
    if 2 ** len(down) != VAE_TEMPORAL or any(not 0 <= lvl < levels - 1 for lvl in down):
        raise ValueError(f"temporal_down_levels={cfg.temporal_down_levels} must name "
                         f"{VAE_TEMPORAL.bit_length() - 1} distinct levels in 0..{levels - 2} "
                         f"(temporal downsamples ride on the spatial ones)")


def _blocks(in_channels: int, out_channels: int, count: int, groups: int) -> list[ResBlock3d]:
    return [ResBlock3d(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(count)]


def _head(channels: int, out_channels: int, groups: int) -> CausalSequential:
    return CausalSequential(FrameGroupNorm(groups, channels), nn.SiLU(),
                            CausalConv3d(channels, out_channels))


class VAEEncoder(nn.Module):
    """video (B, 3, 1 + 4k, H, W) in [-1, 1] -> latents (B, C, 1 + k, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        chans, groups = cfg.block_channels, cfg.norm_groups
        self.conv_in = CausalConv3d(cfg.in_channels, chans[0])
        levels = []
        for i, out_ch in enumerate(chans):
            in_ch = chans[max(i - 1, 0)]
            blocks: list[nn.Module] = [*_blocks(in_ch, out_ch, cfg.layers_per_block, groups)]
            if i < len(chans) - 1:
                blocks.append(Downsample(out_ch, temporal=i in cfg.temporal_down_levels))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.ModuleList(levels)
        self.mid = nn.Sequential(*_blocks(chans[-1], chans[-1], 2, groups))
        self.head = _head(chans[-1], 2 * cfg.latent_channels, groups)

    def check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != self.cfg.in_channels:
            raise ValueError(f"video shape {tuple(video.shape)} must be "
                             f"(batch, {self.cfg.in_channels}, frames, height, width)")
        _, _, frames, height, width = video.shape
        latent_frames(frames)  # raises "frames=6 must be 1 + 4k ..."
        for label, value in (("height", height), ("width", width)):
            if value <= 0 or value % VAE_SPATIAL:
                raise ValueError(f"{label}={value} must be a positive multiple of {VAE_SPATIAL} "
                                 f"(the VAE's spatial compression); resize or crop the video")

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar), each (B, C, 1 + k, H/8, W/8), unscaled."""
        self.check_video(video)
        x = self.conv_in(video)
        for level in self.levels:
            x = level(x)
        x = self.head(self.mid(x))  # (B, 2C, 1 + k, H/8, W/8)
        mean, logvar = x.chunk(2, dim=1)
        return mean, logvar

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # deterministic encoding: the posterior mean, scaled to ~unit variance for the DiT
        mean, _ = self.moments(video)
        return mean * self.cfg.scaling_factor


class VAEDecoder(nn.Module):
    """latents (B, C, 1 + k, h, w) -> video (B, 3, 1 + 4k, 8h, 8w), unclamped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        chans, groups = tuple(reversed(cfg.block_channels)), cfg.norm_groups
        n = len(chans)
        self.conv_in = CausalConv3d(cfg.latent_channels, chans[0])
        self.mid = CausalSequential(*_blocks(chans[0], chans[0], 2, groups))
        levels = []
        for i, out_ch in enumerate(chans):
            in_ch = chans[max(i - 1, 0)]
            blocks: list[nn.Module] = [*_blocks(in_ch, out_ch, cfg.layers_per_block, groups)]
            if i < n - 1:
                # undoes the encoder's downsample after its level n - 2 - i
                blocks.append(Upsample(out_ch, temporal=(n - 2 - i) in cfg.temporal_down_levels))
            levels.append(CausalSequential(*blocks))
        self.levels = nn.ModuleList(levels)
        self.head = _head(chans[-1], cfg.in_channels, groups)

    def check_latents(self, latents: torch.Tensor) -> None:
        if latents.dim() != 5 or latents.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"latents shape {tuple(latents.shape)} must be "
                             f"(batch, {self.cfg.latent_channels}, lframes, lheight, lwidth)")

    def forward(self, latents: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        """The whole video (cache None), or one chunk of a chunked decode (vae_chunks.py)."""
        self.check_latents(latents)
        x = self.mid(self.conv_in(latents / self.cfg.scaling_factor, cache), cache)
        for level in self.levels:
            x = level(x, cache)
        return self.head(x, cache)  # (B, 3, 1 + 4k, 8h, 8w); a chunk: (B, 3, 4k, 8h, 8w)
