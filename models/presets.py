"""Model presets: frozen dataclasses, looked up by exact name.

`tiny` runs the whole pipeline in seconds on a CPU (tests, demo); `small` (8x tiny's width) is for
CPU benchmarks; `cinema` is the paper-scale configuration (Qwen2-VL-7B-Instruct, AlignerNet
6x768, a CogVideoX-5B-class MM-DiT, 45 frames at 480x720). `cinema` is never instantiated in
tests: kernels and engines take their tuned shapes from it.

Over 300 lines on purpose: every part's config, the sampler's (with how the VAE decodes:
`Tiling`, `Decoding`), the config's JSON round trip and the presets are one schema, which
`cinema_config.json` serialises whole; split, each file would import the others.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

VAE_SPATIAL = 8  # 8x8 spatial compression
VAE_TEMPORAL = 4  # 4x temporal compression (causal: frames = 1 + 4k)


@dataclass(frozen=True)
class MLLMConfig:
    """Qwen2-VL (vision tower + LLM). Fields map onto transformers' `Qwen2VLConfig`."""

    # vision tower
    vision_depth: int
    vision_embed_dim: int
    vision_heads: int
    vision_mlp_ratio: float = 4.0
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    # language model
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 512
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2
    rope_theta: float = 1_000_000.0
    # reference images are resized to keep their pixel count in [min_pixels, max_pixels]
    min_pixels: int = 56 * 56
    max_pixels: int = 56 * 56
    max_refs: int = 4
    # documentation only: the hub id of the real checkpoint (hubs are never contacted;
    # real weights load from a local folder, see weights.py)
    hf_id: str = ""


@dataclass(frozen=True)
class AlignerConfig:
    """AlignerNet: latent queries attend over MLLM states, projected to the T5 width."""

    in_dim: int  # MLLM hidden size
    width: int = 768
    depth: int = 6
    heads: int = 8
    num_queries: int = 226  # the base model's T5 sequence length
    out_dim: int = 4096  # T5-XXL width, the DiT's native text features
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class VAEConfig:
    """3D causal video VAE: 4x temporal, 8x8 spatial, `latent_channels` latent channels."""

    in_channels: int = 3
    latent_channels: int = 16
    block_channels: tuple[int, ...] = (128, 256, 256, 512)  # one entry per resolution level
    layers_per_block: int = 2
    # levels (0-based, counted from the input) after which time is halved; two of them -> 4x
    temporal_down_levels: tuple[int, ...] = (1, 2)
    norm_groups: int = 32
    scaling_factor: float = 0.7  # latents are scaled so the DiT sees ~unit variance


@dataclass(frozen=True)
class DiTConfig:
    """MM-DiT video transformer (text and visual streams joined in full self-attention)."""

    in_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w)
    width: int = 3072
    depth: int = 42
    heads: int = 48
    text_dim: int = 4096
    text_len: int = 226
    time_embed_dim: int = 512
    mlp_ratio: float = 4.0
    rope_dims: tuple[int, int, int] = (16, 24, 24)  # (t, h, w) split of head_dim
    rope_theta: float = 10_000.0
    max_refs: int = 4
    attention_backend: str = "sdpa"

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class Tiling:
    """The VAE decode in tiles of `tile` x `tile` latent pixels, neighbours sharing
    `overlap` of them (models/vae_tiles.py: where the seams blend, and what it costs in
    accuracy). For sizes where even one latent frame per decoder call needs too much
    activation memory: the decoder's engine is built for, and called at, one tile."""

    tile: int = 32  # 256 pixels
    overlap: int = 8  # 64 pixels blended across each seam

    def __post_init__(self):
        for label, value in (("tile", self.tile), ("overlap", self.overlap)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"tiling {label}={value!r} must be an integer number of "
                                 f"latent pixels")
        if self.tile < 1 or not 0 < self.overlap < self.tile:
            raise ValueError(f"tiling tile={self.tile}, overlap={self.overlap}: need "
                             f"0 < overlap < tile (latent pixels)")

    def starts(self, size: int) -> list[int]:
        """First latent pixel of each tile along an axis of `size`; the last tile ends at
        the edge (it overlaps its neighbour by `overlap` or more)."""
        if size <= self.tile:
            return [0]
        stride = self.tile - self.overlap
        return [*range(0, size - self.tile, stride), size - self.tile]

    def size(self, lheight: int, lwidth: int) -> tuple[int, int]:
        """Latent (h, w) of every tile of a (lheight, lwidth) latent frame: all tiles of
        one frame have one size (one engine profile, one Triton shape)."""
        return min(self.tile, lheight), min(self.tile, lwidth)


@dataclass(frozen=True)
class SamplerConfig:
    """Generation defaults: rectified-flow Euler with shifted timesteps and CFG."""

    frames: int = 45
    height: int = 480
    width: int = 720
    steps: int = 50
    guidance: float = 6.0
    shift: float = 3.0
    fps: int = 8
    # latent frames the VAE decoder takes per call (models/vae_chunks.py): its activation
    # memory is bounded by the chunk, and frames reach the client one chunk at a time
    decode_chunk: int = 1
    # None: each decoder call takes whole frames; a Tiling: one tile of them, every tile
    # with its own causal state (models/vae_tiles.py); the engine's profile follows it
    decode_tiles: Tiling | None = None

    def __post_init__(self):
        chunk = self.decode_chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"decode_chunk={chunk!r} must be a positive number of latent "
                             f"frames (1 decodes one latent frame, 4 video frames, per call)")
        if self.decode_tiles is not None and not isinstance(self.decode_tiles, Tiling):
            raise ValueError(f"decode_tiles={self.decode_tiles!r} must be a Tiling(tile, "
                             f"overlap) in latent pixels, or None for whole frames")


@dataclass(frozen=True)
class Decoding:
    """A command's choice of how the VAE decoder runs, over the config's (`apply`): None
    keeps the config's value; `tile` 0 decodes whole frames. The CLI's --decode-chunk,
    --decode-tile and --decode-overlap (cli/decoding.py)."""

    chunk: int | None = None  # latent frames per decoder call
    tile: int | None = None  # latent pixels per tile side; 0: untiled
    overlap: int | None = None  # latent pixels neighbouring tiles share

    def __post_init__(self):
        if self.overlap is not None and not self.tile:
            raise ValueError(f"a decode overlap ({self.overlap}) needs a tile size: give "
                             f"--decode-tile too (0 decodes whole frames, without overlap)")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.chunk, self.tile, self.overlap))

    @classmethod
    def of(cls, sampler: SamplerConfig) -> Decoding:
        """Every decoding setting of `sampler`, spelled out (tile 0: whole frames)."""
        tiles = sampler.decode_tiles
        return cls(sampler.decode_chunk, tiles.tile if tiles else 0,
                   tiles.overlap if tiles else None)

    def apply(self, config: CinemaConfig) -> CinemaConfig:
        """`config` decoding as chosen (SamplerConfig and Tiling validate the values)."""
        s = config.sampler
        tiles = s.decode_tiles
        if self.tile == 0:
            tiles = None
        elif self.tile is not None:
            tiles = Tiling(self.tile, self.overlap if self.overlap is not None
                           else Tiling.overlap if tiles is None else tiles.overlap)
        chunk = s.decode_chunk if self.chunk is None else self.chunk
        return dataclasses.replace(config, sampler=dataclasses.replace(
            s, decode_chunk=chunk, decode_tiles=tiles))


@dataclass(frozen=True)
class CinemaConfig:
    name: str
    mllm: MLLMConfig
    aligner: AlignerConfig
    vae: VAEConfig
    dit: DiTConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        """The architecture's sections (the models' configs; not the sampler defaults)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("name", "sampler"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CinemaConfig:
        def build(kind, values):
            names = {f.name: f for f in dataclasses.fields(kind)}
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"{kind.__name__}: unknown fields {unknown}")
            hints = typing.get_type_hints(kind)

            def value(name, v):
                if isinstance(v, list):  # JSON turns tuples into lists; configs stay hashable
                    return tuple(v)
                nested = [t for t in (*typing.get_args(hints[name]), hints[name])
                          if dataclasses.is_dataclass(t)]
                return build(nested[0], v) if isinstance(v, dict) and nested else v

            return kind(**{k: value(k, v) for k, v in values.items()})

        kinds = typing.get_type_hints(cls)
        return cls(name=data["name"], sampler=build(SamplerConfig, data.get("sampler", {})),
                   **{s: build(kinds[s], data[s]) for s in cls.sections()})

    def with_attention_backend(self, backend: str) -> CinemaConfig:
        return dataclasses.replace(self, dit=dataclasses.replace(self.dit,
                                                                  attention_backend=backend))


def _tiny() -> CinemaConfig:
    mllm = MLLMConfig(vision_depth=2, vision_embed_dim=32, vision_heads=2, hidden_size=64,
                      intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                      vocab_size=512, mrope_section=(2, 3, 3))
    return CinemaConfig(
        name="tiny",
        mllm=mllm,
        aligner=AlignerConfig(in_dim=mllm.hidden_size, width=32, depth=2, heads=2,
                              num_queries=16, out_dim=48),
        vae=VAEConfig(block_channels=(8, 16, 16, 16), layers_per_block=1, norm_groups=4),
        dit=DiTConfig(width=32, depth=2, heads=2, text_dim=48, text_len=16, time_embed_dim=32,
                      rope_dims=(4, 6, 6)),
        sampler=SamplerConfig(frames=5, height=64, width=64, steps=4, guidance=4.0, fps=4),
    )


def _small() -> CinemaConfig:
    mllm = MLLMConfig(vision_depth=4, vision_embed_dim=96, vision_heads=4, hidden_size=256,
                      intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2,
                      vocab_size=512, mrope_section=(8, 12, 12),
                      min_pixels=112 * 112, max_pixels=112 * 112)
    return CinemaConfig(
        name="small",
        mllm=mllm,
        aligner=AlignerConfig(in_dim=mllm.hidden_size, width=128, depth=4, heads=4,
                              num_queries=64, out_dim=256),
        vae=VAEConfig(block_channels=(32, 64, 64, 64), layers_per_block=1, norm_groups=8),
        dit=DiTConfig(width=256, depth=4, heads=4, text_dim=256, text_len=64,
                      time_embed_dim=128, rope_dims=(16, 24, 24)),
        sampler=SamplerConfig(frames=9, height=128, width=128, steps=8, guidance=5.0, fps=8),
    )


def _cinema() -> CinemaConfig:
    # Qwen2-VL-7B-Instruct
    mllm = MLLMConfig(vision_depth=32, vision_embed_dim=1280, vision_heads=16,
                      hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                      num_kv_heads=4, vocab_size=152064, mrope_section=(16, 24, 24),
                      min_pixels=224 * 224, max_pixels=448 * 448,
                      hf_id="Qwen/Qwen2-VL-7B-Instruct")
    return CinemaConfig(
        name="cinema",
        mllm=mllm,
        aligner=AlignerConfig(in_dim=mllm.hidden_size),
        vae=VAEConfig(),
        # CogVideoX-5B-class: 42 layers, width 3072, 48 heads of 64, 226 text tokens
        dit=DiTConfig(),
        sampler=SamplerConfig(),  # 45 frames at 480x720 -> 12 latent frames of 60x90
    )


PRESETS = {"tiny": _tiny, "small": _small, "cinema": _cinema}
DEFAULT_PRESET = "tiny"  # what a command runs given neither --preset nor --weights


def get_preset(name: str) -> CinemaConfig:
    """The preset called exactly `name`."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# --- shape rules shared by the pipeline, exporters, engines and serving -----------------


def latent_frames(frames: int) -> int:
    """Latent frames for a video of `frames` frames (causal VAE: 1 + 4k -> 1 + k)."""
    if frames < 1 or (frames - 1) % VAE_TEMPORAL:
        raise ValueError(
            f"frames={frames} must be 1 + {VAE_TEMPORAL}k (1, 5, 9, 13, ...) for the causal VAE")
    return (frames - 1) // VAE_TEMPORAL + 1


def latent_size(height: int, width: int, dit: DiTConfig | None = None) -> tuple[int, int]:
    """Latent (h, w) for a frame of `height` x `width` pixels."""
    multiple = VAE_SPATIAL * (dit.patch_size[1] if dit else 2)
    for label, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise ValueError(f"{label}={value} must be a positive multiple of {multiple} "
                             f"(VAE {VAE_SPATIAL}x times DiT patch)")
    return height // VAE_SPATIAL, width // VAE_SPATIAL


def check_num_refs(num_refs: int, max_refs: int) -> None:
    if not 1 <= num_refs <= max_refs:
        raise ValueError(f"got {num_refs} reference images; between 1 and {max_refs} are supported")


@dataclass(frozen=True)
class TokenCounts:
    text: int
    reference: int  # all K references together
    video: int

    @property
    def total(self) -> int:
        return self.text + self.reference + self.video


def token_counts(config: CinemaConfig, frames: int, height: int, width: int,
                 num_refs: int) -> TokenCounts:
    """Sequence lengths the DiT attends over for one sample."""
    check_num_refs(num_refs, config.dit.max_refs)
    pt, ph, pw = config.dit.patch_size
    lt = latent_frames(frames)
    lh, lw = latent_size(height, width, config.dit)
    per_frame = (lh // ph) * (lw // pw)
    return TokenCounts(text=config.dit.text_len, reference=num_refs * per_frame,
                       video=(lt // pt) * per_frame)
