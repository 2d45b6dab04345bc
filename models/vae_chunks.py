"""Chunked causal decoding: the VAE decoder over a few latent frames at a time, exactly.

Why it is exact. Every layer of the decoder is per frame (FrameGroupNorm, SiLU, spatial
convs, nearest 2x upsampling) except the 3x3x3 causal convs, which read their input's two
previous frames, and the temporal upsample, which keeps frame 0 single. So a chunk needs,
per causal conv, its last two input frames from the previous chunk: the conv's *state*
(diffusers' CogVideoX VAE carries the same as `conv_cache`, Wan's VAE as `feat_cache`).

The first chunk goes through the same graph as the others (one TensorRT engine, one Triton
model) with a `first` flag input:
- a causal conv's history is `where(first, frame 0 repeated, state)`: the one-shot pad is
  copies of frame 0 of that conv's own input, which no zero state can stand for (Wan pads
  with zeros, so its zero cache is its first-chunk state; ours replicates), and which is
  an activation inside the graph, so it cannot be passed in;
- the temporal upsample repeats every frame, frame 0 too, so frame counts do not depend
  on the flag (no data-dependent shapes): the first chunk's output is the one-shot output
  behind FIRST_CHUNK_EXTRA_FRAMES copies of frame 0 (models/vae.py temporal_upsample says
  why), which `decode_chunks` drops. Every later chunk of k latent frames gives 4k frames.

The loop is `iter_chunks(step, ...)` for any step runner (torch here, an engine later);
the step graph: `DecoderStep.forward(latents, first, *states) -> (video, *next_states)`,
states in `state_names` order, named `state.<conv path>` / `next_state.<conv path>` in
`step_spec` (the declarative I/O spec phase 2 derives ONNX axes, TensorRT profiles and
Triton configs from). State shapes follow the batch, height and width: `state_spec`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from .presets import VAE_SPATIAL, VAE_TEMPORAL, VAEConfig
from .specs import StageSpec, TensorSpec, f32, resolve
from .vae import CausalConv3d, VAEDecoder

STATE_INPUT = "state."  # + the causal conv's module path in the decoder
STATE_OUTPUT = "next_state."
FIRST_CHUNK_EXTRA_FRAMES = VAE_TEMPORAL - 1  # copies of frame 0 ahead of the first chunk
# a spatial scale of the decoder (1: latent size ... 8: pixels) -> its symbols in a spec
_SCALE_SYMBOLS = {1: ("lheight", "lwidth"), 2: ("lheight_x2", "lwidth_x2"),
                  4: ("lheight_x4", "lwidth_x4"), VAE_SPATIAL: ("height", "width")}


def causal_convs(decoder: nn.Module) -> dict[CausalConv3d, str]:
    """{conv: its module path} for every conv that carries state, in forward order."""
    return {m: name for name, m in decoder.named_modules()
            if isinstance(m, CausalConv3d) and m.time_pad}


class ConvCache:
    """One chunk's view of the decode state: reads each causal conv's history from
    `states` (or frame 0 repeated where `first`) and records its next state. `long`: the
    convs whose input has at least `time_pad` frames in every call (after a temporal
    upsample: 2 or 4 per latent frame)."""

    def __init__(self, names: Mapping[CausalConv3d, str], states: Mapping[str, torch.Tensor],
                 first: torch.Tensor, long: frozenset[str] = frozenset()):
        self.names = names
        self.states = states
        self.long = long
        self.first = first.reshape(1, 1, 1, 1, 1)  # bool, broadcast over (B, C, T, H, W)
        self.next_states: dict[str, torch.Tensor] = {}

    def history(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """The `conv.time_pad` frames before `x`, (B, C, time_pad, H, W)."""
        name = self.names[conv]
        # frame 0 broadcast against the state, not first_frame_pad: that expand would be a
        # full pad tensor of this conv's input materialised in every call (TensorRT-RTX,
        # cinema at 480 x 720: 0.165 GiB more activation, benchmarks/results/*-vae-chunks-*)
        history = torch.where(self.first, x[:, :, :1], self.states[name])
        # the last time_pad frames of (history, x): a chunk shorter than the pad keeps
        # part of the history. Where x is never that short, they are x's own: then the
        # conv's cat of (history, x) has one reader, and TensorRT-RTX stops keeping it
        # twice (both layouts; benchmarks/results/*-vae-chunks-*)
        self.next_states[name] = (x if name in self.long else
                                  torch.cat([history, x], dim=2))[:, :, -conv.time_pad:]
        return history


class DecoderStep(nn.Module):
    """One chunk of a chunked decode, as an exportable module.

    forward(latents (B, C, k, h, w), first (1,) bool, *states) -> (video (B, 3, 4k, 8h, 8w),
    *next_states), states in `state_names` order, or by keyword with their spec names
    (`state.<conv>`): how runners and the exporter pass a graph's named inputs. The
    decoder's weights are shared.
    """

    def __init__(self, decoder: VAEDecoder, long_inputs: bool = True):
        super().__init__()
        self.decoder = decoder
        self._convs = causal_convs(decoder)
        self.state_names = tuple(self._convs.values())
        # the convs whose every input outlasts their history (ConvCache.long); False: none
        # (how `_long_inputs` itself runs the step)
        self._long = _long_inputs(decoder.cfg) if long_inputs else frozenset()

    def forward(self, latents: torch.Tensor, first: torch.Tensor, *states: torch.Tensor,
                **named_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if named_states:
            states = states + self._by_name(named_states, len(states))
        if len(states) != len(self.state_names):
            raise ValueError(f"got {len(states)} state tensors, the decoder carries "
                             f"{len(self.state_names)} ({STATE_INPUT}* in step_spec order)")
        cache = ConvCache(self._convs, dict(zip(self.state_names, states, strict=True)), first,
                          self._long)
        video = self.decoder(latents, cache)
        return (video, *(cache.next_states[name] for name in self.state_names))

    def _by_name(self, named: dict[str, torch.Tensor], positional: int
                 ) -> tuple[torch.Tensor, ...]:
        names = [STATE_INPUT + n for n in self.state_names]
        unknown = sorted(set(named) - set(names))
        missing = [n for n in names if n not in named]
        if positional or unknown or missing:
            raise ValueError(f"pass the states by position or all by name, not both: got "
                             f"{positional} by position, unknown names {unknown}, missing "
                             f"{missing[:3]}{'...' if len(missing) > 3 else ''}")
        return tuple(named[n] for n in names)

    def initial_states(self, latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Zero states for a decode of `latents` (B, C, T, h, w): the first chunk ignores
        them (first=True), but the graph takes them, shaped as every later chunk's."""
        batch, _, _, lh, lw = latents.shape
        specs = state_spec(self.decoder.cfg, batch, lh * VAE_SPATIAL, lw * VAE_SPATIAL)
        return tuple(torch.zeros([int(d) for d in s.dims], dtype=latents.dtype,
                                 device=latents.device) for s in specs)


# one chunk through a step graph, wherever it runs: (latents, first, states) -> (video,
# next states); a torch DecoderStep (`iter_decode`) or an engine's runner
StepFn = Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]],
                  tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


def iter_chunks(step: StepFn, latents: torch.Tensor, chunk: int,
                states: tuple[torch.Tensor, ...]) -> Iterator[torch.Tensor]:
    """The chunked decode's loop: feed `chunk` latent frames at a time with the previous
    chunk's states, drop the first chunk's copies of frame 0, yield each chunk's video:
    (B, 3, 1 + 4(k - 1), 8h, 8w) first, then (B, 3, 4k, 8h, 8w) (the tail: fewer).
    `states`: the zero states the first chunk ignores (`DecoderStep.initial_states`)."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive number of latent frames")
    size = min(chunk, latents.shape[2])  # `chunk_size`: every call takes this many frames
    first = torch.ones(1, dtype=torch.bool, device=latents.device)
    for start in range(0, latents.shape[2], size):
        part = latents[:, :, start:start + size]
        # a short tail is padded with copies of its last frame, so that every call of one
        # decode has one shape (one engine profile, one CUDA graph, one Triton shape); the
        # decoder is causal (no frame reads a later one), so the padding's frames are
        # dropped and the rest is exact. The states it leaves are never read.
        short = size - part.shape[2]
        if short:
            part = torch.cat([part, part[:, :, -1:].expand(-1, -1, short, -1, -1)], dim=2)
        video, states = step(part, first, states)
        if short:
            video = video[:, :, :video.shape[2] - VAE_TEMPORAL * short]
        yield video[:, :, FIRST_CHUNK_EXTRA_FRAMES:] if start == 0 else video
        first = torch.zeros_like(first)


def chunk_size(chunk: int, latent_frames: int) -> int:
    """Latent frames of every step call of a decode of `latent_frames` in chunks of
    `chunk` (the tail is padded to it: `iter_chunks`)."""
    return min(chunk, latent_frames)


def iter_decode(decoder: VAEDecoder, latents: torch.Tensor,
                chunk: int) -> Iterator[torch.Tensor]:
    """Yield the video of `latents` (B, C, T, h, w) chunk by chunk, `chunk` latent frames
    at a time, through the torch step module."""
    decoder.check_latents(latents)
    module = DecoderStep(decoder)

    def step(part: torch.Tensor, first: torch.Tensor, states: tuple[torch.Tensor, ...]):
        video, *next_states = module(part, first, *states)
        return video, tuple(next_states)

    return iter_chunks(step, latents, chunk, module.initial_states(latents))


def decode_chunks(decoder: VAEDecoder, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """The one-shot decode of `latents`, computed `chunk` latent frames at a time."""
    return torch.cat(list(iter_decode(decoder, latents, chunk)), dim=2)


# --- the declarative I/O of the step graph ---------------------------------------------


@functools.lru_cache(maxsize=8)
def _state_layout(cfg: VAEConfig) -> tuple[tuple[str, int, int], ...]:
    """(conv path, input channels, spatial scale vs the latents) per state, in order, read
    from a forward of the decoder on the meta device (no memory, no arithmetic)."""
    seen: dict[str, tuple[int, ...]] = {}

    def record(conv: CausalConv3d, args: tuple) -> None:
        seen[convs[conv]] = tuple(args[0].shape)

    with torch.device("meta"):
        decoder = VAEDecoder(cfg)
        convs = causal_convs(decoder)
        hooks = [conv.register_forward_pre_hook(record) for conv in convs]
        lh, lw = 2, 3
        decoder(torch.empty(1, cfg.latent_channels, 1, lh, lw))
    for hook in hooks:
        hook.remove()
    layout = []
    for name in convs.values():
        _, channels, _, height, width = seen[name]
        if height % lh or width % lw or height // lh != width // lw:
            raise AssertionError(f"{name}: input {seen[name]} is no multiple of the latents")
        layout.append((name, channels, height // lh))
    return tuple(layout)


@functools.lru_cache(maxsize=8)
def _long_inputs(cfg: VAEConfig) -> frozenset[str]:
    """The causal convs (module paths) whose input has at least `time_pad` frames in a
    one-latent-frame step, so in every step (after the temporal upsamples: 2 or 4 frames
    per latent frame), read from a step on the meta device."""
    seen: set[str] = set()

    def record(conv: CausalConv3d, args: tuple) -> None:
        if args[0].shape[2] >= conv.time_pad:
            seen.add(step._convs[conv])

    with torch.device("meta"):
        step = DecoderStep(VAEDecoder(cfg), long_inputs=False)
        hooks = [conv.register_forward_pre_hook(record) for conv in step._convs]
        latents = torch.empty(1, cfg.latent_channels, 1, 2, 3)
        step(latents, torch.ones(1, dtype=torch.bool), *step.initial_states(latents))
    for hook in hooks:
        hook.remove()
    return frozenset(seen)


def _state_tensor(prefix: str, name: str, channels: int, scale: int,
                  dtype: torch.dtype) -> TensorSpec:
    height, width = _SCALE_SYMBOLS[scale]
    return TensorSpec(prefix + name, dtype,
                      ("batch", channels, VAE_TEMPORAL // 2, height, width))


def step_spec(cfg: VAEConfig, dtype: torch.dtype = torch.float32) -> StageSpec:
    """The step graph's I/O: latents, first, state.* -> video, next_state.*. Symbols:
    batch, lframes, lheight, lwidth; the states' lheight_x2, lheight_x4, height (and
    widths) are the latent size times 2, 4, 8 (`state_values`); a step's video has
    4 * lframes frames ("chunk_frames").

    `dtype`: the states', the graph's compute dtype. Latents and video are float32, as
    every stage's float I/O (export/dtype.py); the states are the graph's own activations
    handed back to it, so they cross in the type it computes in: a float32 copy of an
    fp16 graph's states would be twice their size (the largest I/O the engine has) and
    round to the same values anyway."""
    layout = _state_layout(cfg)
    if any(scale not in _SCALE_SYMBOLS for _, _, scale in layout):
        raise ValueError(f"decoder scales {sorted({s for *_, s in layout})} outside "
                         f"{sorted(_SCALE_SYMBOLS)}")
    states_in = tuple(_state_tensor(STATE_INPUT, *row, dtype) for row in layout)
    states_out = tuple(_state_tensor(STATE_OUTPUT, *row, dtype) for row in layout)
    latents = f32("latents", ("batch", cfg.latent_channels, "lframes", "lheight", "lwidth"))
    video = f32("video", ("batch", cfg.in_channels, "chunk_frames", "height", "width"))
    return StageSpec("vae_decoder_step",
                     (latents, TensorSpec("first", torch.bool, (1,)), *states_in),
                     (video, *states_out))


def state_values(batch: int, lheight: int, lwidth: int) -> dict[str, int]:
    """Values of the state symbols for latents of (lheight, lwidth)."""
    values = {"batch": batch}
    for scale, (height, width) in _SCALE_SYMBOLS.items():
        values[height], values[width] = scale * lheight, scale * lwidth
    return values


def state_spec(cfg: VAEConfig, batch: int, height: int, width: int,
               dtype: torch.dtype = torch.float32) -> tuple[TensorSpec, ...]:
    """The state tensors (`state.*` names, concrete shapes, dtype) of a decode of
    `batch` videos of `height` x `width` pixels, in the step's input order."""
    for label, value in (("height", height), ("width", width)):
        if value <= 0 or value % VAE_SPATIAL:
            raise ValueError(f"{label}={value} must be a positive multiple of {VAE_SPATIAL}")
    values = state_values(batch, height // VAE_SPATIAL, width // VAE_SPATIAL)
    return tuple(TensorSpec(s.name, s.dtype, resolve(s, values))
                 for s in step_spec(cfg, dtype).inputs if s.name.startswith(STATE_INPUT))
