"""CINEMA denoiser: an MM-DiT video transformer (CogVideoX / SD3 style).

Text tokens and visual tokens (K reference-image latents followed by the video latents) keep
separate weights but meet in one joint self-attention per block. The model predicts the
rectified-flow velocity for the video latents. I/O follows stage "dit" in `specs.py`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import QKPrologue, attention, fuses_prologue, rms_norm
from .presets import DiTConfig, check_num_refs
from .rope import apply_rope, check_rope_dims, grid_positions, rope_3d, with_text_rows

_ADALN_GAIN = 0.5  # keeps shift/scale/gate modest (~0.3) so residuals grow slowly with depth
_REF_EMBED_STD = 0.5  # a type offset comparable to, but smaller than, patch features (~1)


class RMSNorm(nn.Module):
    """RMS norm over the last dim, written out so it exports at any ONNX opset."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def timestep_sinusoid(timestep: torch.Tensor, dim: int,
                      max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) timesteps in [0, 1000] -> (B, dim) float32 [cos | sin] features."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)  # (half,)
    args = timestep.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class StreamLayers(nn.Module):
    """One stream's weights in an MM-DiT block (text and visual streams each own one)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        width, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
        self.modulation = nn.Linear(cfg.time_embed_dim, 6 * width)  # shift/scale/gate x2
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = RMSNorm(cfg.head_dim)
        self.k_norm = RMSNorm(cfg.head_dim)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        self.heads = cfg.heads

    def modulate(self, temb: torch.Tensor) -> list[torch.Tensor]:
        """(B, E) -> six (B, 1, width) tensors: shift/scale/gate for attention, then MLP."""
        return [m[:, None] for m in self.modulation(F.silu(temb)).chunk(6, dim=-1)]

    def qkv_heads(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                  normed: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, width) -> q, k (normed unless `normed` is False) and v, each (B, H, S, D)."""
        x = self.norm1(x) * (1 + scale) + shift
        b, s, _ = x.shape
        qkv = self.qkv(x).reshape(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, H, S, D)
        if not normed:
            return qkv[0], qkv[1], qkv[2]
        return self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]

    def residuals(self, x: torch.Tensor, attn: torch.Tensor,
                  mod: list[torch.Tensor]) -> torch.Tensor:
        """Gated attention-output and MLP residuals. x, attn: (B, S, width)."""
        _, _, gate_attn, shift_mlp, scale_mlp, gate_mlp = mod
        x = x + gate_attn * self.out(attn)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp(h)


class MMDiTBlock(nn.Module):
    """Joint attention over [text, visual] tokens with per-stream weights."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.text = StreamLayers(cfg)
        self.visual = StreamLayers(cfg)
        self.backend = cfg.attention_backend

    def prologue(self, text_len: int, cos: torch.Tensor, sin: torch.Tensor) -> QKPrologue:
        """Q/K norms and RoPE over the joint [text, visual] sequence, for a fusing kernel:
        per-token (L + N, D) norm weights (each stream's own) and rope tables whose text rows
        are the identity."""
        n = cos.shape[0]

        def per_token(text: RMSNorm, visual: RMSNorm) -> torch.Tensor:
            d = text.weight.shape[0]
            return torch.cat([text.weight.expand(text_len, d), visual.weight.expand(n, d)])

        cos, sin = with_text_rows(cos, sin, text_len)
        return QKPrologue(per_token(self.text.q_norm, self.visual.q_norm),
                          per_token(self.text.k_norm, self.visual.k_norm), cos, sin,
                          eps=self.text.q_norm.eps)

    def forward(self, txt: torch.Tensor, vis: torch.Tensor, temb: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """txt (B, L, width), vis (B, N, width), temb (B, E), cos/sin (N, D)."""
        mod_t, mod_v = self.text.modulate(temb), self.visual.modulate(temb)
        # a fusing backend norms and rotates Q/K tiles as it loads them
        fused = fuses_prologue(self.backend)
        qt, kt, vt = self.text.qkv_heads(txt, mod_t[0], mod_t[1], normed=not fused)  # (B,H,L,D)
        qv, kv, vv = self.visual.qkv_heads(vis, mod_v[0], mod_v[1], normed=not fused)  # (B,H,N,D)
        prologue = self.prologue(txt.shape[1], cos, sin) if fused else None
        if not fused:  # RoPE on visual tokens only: text has no spatial position
            qv, kv = apply_rope(qv, cos, sin), apply_rope(kv, cos, sin)
        q, k, v = (torch.cat(pair, dim=2) for pair in ((qt, qv), (kt, kv), (vt, vv)))
        out = attention(q, k, v, backend=self.backend, prologue=prologue)  # (B, H, L + N, D)
        b, _, s, _ = out.shape
        out = out.transpose(1, 2).reshape(b, s, -1)  # (B, L + N, width)
        text_len = txt.shape[1]
        txt = self.text.residuals(txt, out[:, :text_len], mod_t)
        vis = self.visual.residuals(vis, out[:, text_len:], mod_v)
        return txt, vis


def _check_config(cfg: DiTConfig) -> None:
    if cfg.width % cfg.heads:
        raise ValueError(f"width={cfg.width} must be divisible by heads={cfg.heads}")
    if cfg.time_embed_dim % 2:
        raise ValueError(f"time_embed_dim={cfg.time_embed_dim} must be even (cos | sin halves)")
    check_rope_dims(cfg.rope_dims, cfg.head_dim)


class CinemaDiT(nn.Module):
    """forward(latents, timestep, text_states, ref_latents) -> velocity (stage "dit")."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        pt, ph, pw = cfg.patch_size
        self.patch_embed = nn.Linear(cfg.in_channels * pt * ph * pw, cfg.width)
        self.ref_embed = nn.Parameter(torch.randn(cfg.width) * _REF_EMBED_STD)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim), nn.SiLU(),
                                      nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim))
        self.blocks = nn.ModuleList(MMDiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(cfg.time_embed_dim, 2 * cfg.width)  # shift, scale
        self.proj_out = nn.Linear(cfg.width, pt * ph * pw * cfg.in_channels)

    def with_attention_backend(self, backend: str) -> CinemaDiT:
        """A twin of this model that shares its weights (no copy) but attends with `backend`
        (e.g. to export a TensorRT-plugin graph while the original keeps running SDPA)."""
        with torch.device("meta"):
            twin = CinemaDiT(dataclasses.replace(self.cfg, attention_backend=backend))
        twin.load_state_dict(self.state_dict(), assign=True)  # assign: the same tensors
        return twin.train(self.training)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, T/pt * h/ph * w/pw, C*pt*ph*pw), tokens t-major."""
        pt, ph, pw = self.cfg.patch_size
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T', h', w', C, pt, ph, pw)
        return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)

    def unpatchify(self, tokens: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """Inverse of `patchify`: (B, N, C*pt*ph*pw) -> (B, C, t, h, w)."""
        pt, ph, pw = self.cfg.patch_size
        b, c = tokens.shape[0], self.cfg.in_channels
        x = tokens.reshape(b, t // pt, h // ph, w // pw, c, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T', pt, h', ph, w', pw)
        return x.reshape(b, c, t, h, w)

    def check_inputs(self, latents: torch.Tensor, timestep: torch.Tensor,
                     text_states: torch.Tensor, ref_latents: torch.Tensor) -> None:
        """Raise ValueError naming the violated constraint (see stage "dit" in specs.py)."""
        cfg, (pt, ph, pw) = self.cfg, self.cfg.patch_size
        if latents.dim() != 5 or latents.shape[1] != cfg.in_channels:
            raise ValueError(f"latents must be (B, {cfg.in_channels}, T, h, w), "
                             f"got {tuple(latents.shape)}")
        b, _, t, h, w = latents.shape
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latents (T, h, w)=({t}, {h}, {w}) must be divisible by the patch "
                             f"size {cfg.patch_size}; resize the video")
        if timestep.shape != (b,):
            raise ValueError(f"timestep must be ({b},) to match latents' batch, "
                             f"got {tuple(timestep.shape)}")
        if text_states.shape != (b, cfg.text_len, cfg.text_dim):
            raise ValueError(f"text_states must be ({b}, text_len={cfg.text_len}, "
                             f"text_dim={cfg.text_dim}), got {tuple(text_states.shape)}")
        if ref_latents.dim() != 5:
            raise ValueError(f"ref_latents must be (B, K, C, h, w), got {tuple(ref_latents.shape)}")
        check_num_refs(ref_latents.shape[1], cfg.max_refs)
        expected = (b, ref_latents.shape[1], cfg.in_channels, h, w)
        if ref_latents.shape != expected:
            raise ValueError(f"ref_latents must be {expected} (batch, channels and h, w as the "
                             f"video latents), got {tuple(ref_latents.shape)}")

    def visual_rope(self, frames: int, height: int, width: int, num_refs: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (K*hw + T*hw, D) for visual tokens ordered [references, video].

        Reference k sits on the video's (h, w) grid at frame index `frames + k`, after the
        last video frame: each reference gets positions distinct from every video frame and
        from the other references (so their order matters and they are told apart), while
        one set of weights serves any K in 1..max_refs, because the relative offsets between
        video and references keep the same form whatever K is.
        """
        video = grid_positions(frames, height, width, device=device)
        refs = grid_positions(num_refs, height, width, frame_offset=frames, device=device)
        return rope_3d(torch.cat([refs, video]), self.cfg.rope_dims, self.cfg.rope_theta)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text_states: torch.Tensor,
                ref_latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, T, h, w), timestep (B,), text_states (B, L, text_dim),
        ref_latents (B, K, C, h, w) -> velocity (B, C, T, h, w)."""
        self.check_inputs(latents, timestep, text_states, ref_latents)
        pt, ph, pw = self.cfg.patch_size
        _, _, t, h, w = latents.shape
        num_refs = ref_latents.shape[1]
        # 1. patch embedding: references are one-frame latents; repeating each pt times
        # gives exactly one token frame per reference for any temporal patch size
        video = self.patch_embed(self.patchify(latents))  # (B, T'h'w', width)
        refs = ref_latents.transpose(1, 2).repeat_interleave(pt, dim=2)  # (B, C, K*pt, h, w)
        refs = self.patch_embed(self.patchify(refs)) + self.ref_embed  # (B, K h'w', width)
        vis = torch.cat([refs, video], dim=1)
        cos, sin = self.visual_rope(t // pt, h // ph, w // pw, num_refs, latents.device)
        # 2. text stream
        txt = self.text_proj(text_states)  # (B, L, width)
        # 3. timestep embedding
        temb = self.time_mlp(timestep_sinusoid(timestep, self.cfg.time_embed_dim).to(video.dtype))
        # 4. MM-DiT blocks
        for block in self.blocks:
            txt, vis = block(txt, vis, temb, cos, sin)
        # 5. final adaLN norm and projection, video tokens only
        shift, scale = (m[:, None] for m in self.out_modulation(F.silu(temb)).chunk(2, dim=-1))
        video = vis[:, refs.shape[1]:]
        video = self.norm_out(video) * (1 + scale) + shift
        return self.unpatchify(self.proj_out(video), t, h, w)


@torch.no_grad()
def _init_weights(model: CinemaDiT, generator: torch.Generator) -> None:
    """Fan-in scaled normal init for every parameter; nothing is zero-initialised.

    std = gain / sqrt(fan_in) keeps activations O(1) at every width (a fixed std of 0.02
    would shrink signals ~10x per layer in the width-32 tiny preset). adaLN projections use
    gain 0.5 for modest shifts, scales and gates. Biases start at 0, which is harmless: the
    weights alone make every input reach the output.
    """
    done: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            gain = _ADALN_GAIN if "modulation" in name else 1.0
            module.weight.normal_(0.0, gain / math.sqrt(module.in_features), generator=generator)
            module.bias.zero_()
            done.update((id(module.weight), id(module.bias)))
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
            done.add(id(module.weight))
    model.ref_embed.normal_(0.0, _REF_EMBED_STD, generator=generator)
    done.add(id(model.ref_embed))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"_init_weights does not initialise {missed}; add a rule for them")


def create_dit(cfg: DiTConfig, seed: int = 0) -> CinemaDiT:
    """A CinemaDiT with deterministic random weights (same seed -> same weights)."""
    with torch.device("meta"):  # skip the default init; every parameter is set below
        model = CinemaDiT(cfg)
    model = model.to_empty(device="cpu")
    _init_weights(model, torch.Generator().manual_seed(seed))
    return model.eval()
