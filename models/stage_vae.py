"""The VAE (models/vae.py) as two stages, the halves of one VideoVAE in vae.safetensors: the
encoder takes each reference image as a one-frame video to latents; the decoder turns the
denoised latents into the video's frames, a chunk of latent frames per call."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .presets import VAE_SPATIAL, VAE_TEMPORAL
from .specs import StageSpec, TensorSpec, f32
from .stage import Case, Request, Stage, video_cases, video_symbols

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .presets import CinemaConfig
    from .runner import Runner


class _VAEStage(Stage):
    part = "vae"
    weights_entry = "vae.safetensors"

    def new_part(self, config: CinemaConfig) -> nn.Module:
        from .video_vae import VideoVAE

        return VideoVAE(config.vae)

    @staticmethod
    def _tensors(config: CinemaConfig) -> tuple[TensorSpec, TensorSpec]:
        """(video, latents): the pixels in [-1, 1] and their latents."""
        C = config.vae.latent_channels
        return (f32("video", ("batch", 3, "frames", "height", "width")),
                f32("latents", ("batch", C, "lframes", "lheight", "lwidth")))


class VAEEncoderStage(_VAEStage):
    name = "vae_encoder"
    submodule = "encoder"
    encodes = True

    def spec(self, config: CinemaConfig) -> StageSpec:
        video, latents = self._tensors(config)
        return StageSpec(self.name, (video,), (latents,))

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        example, one, two = video_cases(config)
        # a reference is encoded alone as a single frame (models/pipeline.py
        # _encode_references): the engine's profile takes batch 1, frames 1
        return example, ({**one, "batch": 1, "lframes": 1, "frames": 1}, two)

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        # every reference is its own call, a single-frame video of batch 1 (the pipeline's
        # `_encode_references`): the builder's activation is one reference's whatever the
        # count (paper scale: 0.58 GiB, against 2.31 for 4 in one batch; benchmarks/
        # results/cpu-2core-vae-chunks-20261206.md), and the encoder computes each sample
        # on its own, so one call per reference gives the batched encode's latents (to
        # fp32's last bits: tests/models/test_reference_encoding.py)
        return {**video_symbols(config, request, frames=1), "batch": 1}


class VAEDecoderStage(_VAEStage):
    """The decoder as its chunk step (models/vae_chunks.py): one graph the pipeline calls
    once per `config.sampler.decode_chunk` latent frames, passing the causal convs' states
    the previous call returned (`state.*` in, `next_state.*` out) and `first` (the first
    chunk pads with its own frame 0, which no state tensor can hold). Chunked equals the
    one-shot decode; activations are bounded by the chunk. With `decode_tiles` each call
    takes one spatial tile of the chunk (models/vae_tiles.py, approximate): the profile,
    the states and the activations are a tile's."""

    name = "vae_decoder"
    submodule = "decoder"

    def spec(self, config: CinemaConfig) -> StageSpec:
        return self.exported_spec(config, "float32")

    def exported_spec(self, config: CinemaConfig, compute: str) -> StageSpec:
        """The states in the graph's compute dtype (vae_chunks.step_spec says why)."""
        from .dtypes import lookup
        from .vae_chunks import step_spec

        return dataclasses.replace(step_spec(config.vae, lookup(compute).torch), name=self.name)

    def _of(self, part: nn.Module) -> nn.Module:
        from .vae_chunks import DecoderStep
        from .video_vae import VideoVAE

        assert isinstance(part, VideoVAE), part
        return DecoderStep(part.decoder)

    def cases(self, config: CinemaConfig) -> tuple[Case, tuple[Case, ...]]:
        """A later chunk of one latent frame (every call but the first of a decode at the
        default decode_chunk: each conv's history outlasts the chunk, so the states reach
        the next states as well as the video) and a first chunk of several. States are
        drawn random (never zero): a graph that drops a state, or reads `first` wrongly,
        fails one of them."""
        example, one, two = video_cases(config)
        return _step_case(example, False), (_step_case({**one, "lframes": 1}, False),
                                             _step_case(two, True))

    def symbols(self, request: Request, config: CinemaConfig) -> dict[str, int]:
        from .vae_chunks import chunk_size, state_values

        video = video_symbols(config, request)
        lframes = chunk_size(config.sampler.decode_chunk, video["lframes"])
        # a call's latents, states and video: one tile's (lheight, height, ...) when tiled
        return {**video, **state_values(request.batch, *self.call_size(
                    config, video["lheight"], video["lwidth"])),
                "lframes": lframes, "chunk_frames": VAE_TEMPORAL * lframes}

    @staticmethod
    def call_size(config: CinemaConfig, lheight: int, lwidth: int) -> tuple[int, int]:
        """Latent (h, w) of each call's latents in a decode of (lheight, lwidth) latents:
        a tile's with `decode_tiles`, else the whole frame's."""
        tiles = config.sampler.decode_tiles
        return (lheight, lwidth) if tiles is None else tiles.size(lheight, lwidth)

    def sample_inputs(self, config: CinemaConfig, case: Case, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
        import torch

        inputs = super().sample_inputs(config, case, seed)
        inputs["first"] = torch.tensor([bool(case["first"])])
        return inputs

    def decode(self, runner: Runner, latents: torch.Tensor, config: CinemaConfig,
               compute: str = "float32") -> Iterator[torch.Tensor]:
        """The video of `latents` (B, C, T, h, w), chunk by chunk through `runner` (this
        stage's, on any runtime): models/vae_chunks.py `iter_chunks` says what each is.
        With `config.sampler.decode_tiles`, each chunk is every tile's in turn, blended
        (models/vae_tiles.py `iter_tiles`), each tile's states held here. `compute`: what
        the runner's graph computes in, its states' dtype (the manifest's compute_dtype;
        models/runner.py `compute_dtype` reads it off a runner)."""
        import torch

        from .vae_chunks import iter_chunks, state_spec
        from .vae_tiles import iter_tiles

        spec = self.exported_spec(config, compute)
        states_in, states_out = spec.input_names[2:], spec.output_names[1:]

        def step(part: torch.Tensor, first: torch.Tensor, states: tuple[torch.Tensor, ...]):
            out = runner.run({"latents": part, "first": first,
                              **dict(zip(states_in, states, strict=True))})
            return out["video"], tuple(out[name] for name in states_out)

        batch, _, _, lh, lw = latents.shape
        lh, lw = self.call_size(config, lh, lw)
        # the graph's state dtype (the spec's), never assumed
        zeros = tuple(torch.zeros([int(d) for d in s.dims], dtype=s.dtype) for s in
                      state_spec(config.vae, batch, lh * VAE_SPATIAL, lw * VAE_SPATIAL,
                                 spec.inputs[-1].dtype))
        tiles, chunk = config.sampler.decode_tiles, config.sampler.decode_chunk
        if tiles is None:
            return iter_chunks(step, latents, chunk, zeros)
        return iter_tiles(step, latents, tiles, chunk, zeros)


def _step_case(case: Case, first: bool) -> Case:
    from .vae_chunks import state_values

    return {**case, **state_values(case["batch"], case["lheight"], case["lwidth"]),
            "chunk_frames": VAE_TEMPORAL * case["lframes"], "first": int(first)}


VAE_ENCODER, VAE_DECODER = VAEEncoderStage(), VAEDecoderStage()
