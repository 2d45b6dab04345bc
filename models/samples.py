"""Sample inputs of a graph, drawn by tensor name: deterministic given the generator, and
realistic enough that a graph that drops or misreads an input fails its check."""

from __future__ import annotations

import torch


def draw(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One input of `shape`: masks padded both ways, M-RoPE ids with an image span,
    timesteps in [0, 1000), videos in [-1, 1], anything else standard normal."""
    if name == "attention_mask":
        return padding_mask(*shape)
    if name == "position_ids":
        return text_positions(shape[1], shape[2])
    if name == "timestep":
        return torch.rand(shape, generator=generator) * 1000.0
    if name == "video":
        return torch.rand(shape, generator=generator) * 2.0 - 1.0
    return torch.randn(shape, generator=generator)


def padding_mask(batch: int, seq: int) -> torch.Tensor:
    """(B, S) int64: sample 0 unpadded, odd samples masked from token 1 on (left padding
    behind one leading token), even samples 2.. right-padded; every row keeps at least
    half its tokens.

    Both kinds on purpose: a causal LM's valid tokens never see right padding, so only a
    masked span before valid tokens tests its mask (the connector's bidirectional pooling
    sees both). The leading valid token keeps every query row one key to attend to: a
    fully masked row (pure left padding) is undefined, and runtimes fill it differently.
    """
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(1, batch):
        pad = (seq * b) // (2 * batch)
        if b % 2:
            mask[b, 1:1 + pad] = 0
        else:
            mask[b, seq - pad:] = 0
    return mask


def text_positions(batch: int, seq: int) -> torch.Tensor:
    """(3, B, S) M-RoPE ids laid out as Qwen2-VL's get_rope_index does for a prompt with one
    image: text positions on all three rows, then an image span whose temporal row stays
    put while the height and width rows walk its grid, then text again from past the
    grid. Each sample's image sits elsewhere and has another grid, so a graph that reads
    only the text row (or treats the rows alike) is off by far more than rounding."""
    positions = torch.arange(seq).expand(3, batch, seq).clone()
    for b in range(batch):
        if seq < 8 + 4 * b:  # too short to hold an image span: text only
            continue
        start, width = seq // 4 + b, 2 + b % 3
        rows = max(1, (seq // 2) // width)
        tokens = rows * width  # image tokens, in raster order
        end = start + tokens
        text = torch.arange(start)
        grid = torch.arange(tokens)
        after = start + max(rows, width) + torch.arange(seq - end)
        positions[0, b] = torch.cat([text, torch.full((tokens,), start), after])
        positions[1, b] = torch.cat([text, start + grid // width, after])
        positions[2, b] = torch.cat([text, start + grid % width, after])
    return positions
