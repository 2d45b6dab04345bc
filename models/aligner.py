"""AlignerNet: the CINEMA connector from MLLM hidden states to the DiT's text features.

The DiT was trained on T5-XXL features (226 tokens of width 4096). CINEMA replaces T5 by a
multimodal LLM and bridges the two with AlignerNet: a fixed set of learnable latent queries
attends over the variable-length MLLM hidden states (Perceiver-resampler style, as in
Flamingo) and is projected to the T5 width, so the DiT sees a fixed-length sequence whatever
the prompt and the number of reference images.

`forward` has no data-dependent Python control flow: padding is handled by an attention
mask only, so the module traces and exports with dynamic batch and sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .presets import AlignerConfig


def _check_config(cfg: AlignerConfig) -> None:
    for name in ("in_dim", "width", "depth", "heads", "num_queries", "out_dim"):
        value = getattr(cfg, name)
        if value <= 0:
            raise ValueError(f"AlignerConfig.{name}={value} must be positive")
    if cfg.width % cfg.heads:
        raise ValueError(f"AlignerConfig.width={cfg.width} must be divisible by "
                         f"heads={cfg.heads}; pick a width that is a multiple of heads")


class AlignerBlock(nn.Module):
    """Pre-LN cross-attention of the queries over [context ; queries], then a pre-LN MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm_context = nn.LayerNorm(width)
        self.norm_queries = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.to_out = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        return x.reshape(b, s, self.heads, w // self.heads).transpose(1, 2)  # (B, H, S, D)

    def forward(self, queries: torch.Tensor, context: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, W), context (B, S, W), key_mask (B, 1, 1, S + Q) bool -> (B, Q, W)."""
        q_in = self.norm_queries(queries)
        # the queries also attend to themselves (Perceiver resampler): every row then has at
        # least Q valid keys, so an all-padding prompt can never produce a NaN softmax
        kv_in = torch.cat([self.norm_context(context), q_in], dim=1)  # (B, S + Q, W)
        q = self._split_heads(self.to_q(q_in))  # (B, H, Q, D)
        k, v = (self._split_heads(t) for t in self.to_kv(kv_in).chunk(2, dim=-1))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, Q, D)
        b, _, n, _ = attn.shape
        queries = queries + self.to_out(attn.transpose(1, 2).reshape(b, n, -1))
        return queries + self.mlp(self.norm_mlp(queries))


class AlignerNet(nn.Module):
    """Latent queries over MLLM hidden states -> (B, num_queries, out_dim) text states."""

    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.input_norm = nn.LayerNorm(cfg.in_dim)
        self.input_proj = nn.Linear(cfg.in_dim, cfg.width)
        # std 0.02 (ViT/CLIP convention): distinct, small queries; never zero, or all the
        # queries would be identical and the output could not depend on the query index
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(
            AlignerBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.output_norm = nn.LayerNorm(cfg.width)
        self.output_proj = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, S, in_dim) float, attention_mask (B, S) 1=valid -> (B, Q, out_dim)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.cfg.in_dim:
            raise ValueError(f"hidden_states must be (batch, seq, {self.cfg.in_dim}); "
                             f"got {tuple(hidden_states.shape)}")
        if attention_mask.shape != hidden_states.shape[:2]:
            raise ValueError(f"attention_mask must be (batch, seq) = "
                             f"{tuple(hidden_states.shape[:2])}; got {tuple(attention_mask.shape)}")
        b = hidden_states.shape[0]
        valid = attention_mask != 0  # (B, S)
        # padded rows may hold anything another runtime left there (even inf/NaN); a masked
        # key still multiplies its value by a zero weight, so zero them to keep 0 * x finite
        hidden_states = hidden_states.masked_fill(~valid.unsqueeze(-1), 0.0)
        # 1. project the MLLM states to the aligner width
        context = self.input_proj(self.input_norm(hidden_states))  # (B, S, W)
        # 2. learned queries, one set per sample
        queries = self.queries.unsqueeze(0).expand(b, -1, -1)  # (B, Q, W)
        # 3. keys are [MLLM states ; queries]; the queries are always valid
        query_valid = valid.new_ones(b, self.cfg.num_queries)
        key_mask = torch.cat([valid, query_valid], dim=1)[:, None, None, :]  # (B, 1, 1, S + Q)
        for block in self.blocks:
            queries = block(queries, context, key_mask)
        # 4. project to the DiT's native text width
        return self.output_proj(self.output_norm(queries))  # (B, Q, out_dim)


def create_aligner(cfg: AlignerConfig, seed: int = 0) -> AlignerNet:
    """A randomly initialised AlignerNet, identical for identical (cfg, seed).

    The global RNG state is restored afterwards, so building a model does not perturb the
    caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AlignerNet(cfg).eval()
