"""Deployment shapes -> per-stage TensorRT profiles, and profiles.yaml validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from cinema_trt.engines.shapes import (
    DeploymentShapes,
    default_shapes,
    load_shapes,
    profiles_for,
    shapes_from_dict,
)
from cinema_trt.models.specs import Dim
from cinema_trt.models.stages import CONNECTOR, DIT, MLLM, VAE_DECODER, VAE_ENCODER

# the tiny preset: 1 + 4k frames, 64x64 px -> 8x8 latents, 16 latent channels, MLLM width 64,
# 16 connector queries of width 48, 56x56-pixel images -> 16 patches of 3*2*14*14 = 1176
C, PATCH_DIM = 16, 1176


@pytest.fixture
def shapes():
    """frames 5..9 (latent 2..3), 32..64 px, 1..3 refs, one request, CFG on."""
    return DeploymentShapes(batch=Dim(1, 1, 1), frames=Dim(5, 5, 9), height=Dim(32, 64, 64),
                            width=Dim(32, 48, 64), refs=Dim(1, 2, 3), seq=Dim(8, 100, 300))


def test_dit_profile_doubles_the_batch_for_cfg_and_keeps_min_at_one(tiny, shapes):
    profiles = profiles_for(DIT.spec(tiny), shapes, tiny)
    assert list(profiles) == ["latents", "timestep", "text_states", "ref_latents"]
    assert profiles["latents"] == ((1, C, 2, 4, 4), (2, C, 2, 8, 6), (2, C, 3, 8, 8))
    assert profiles["timestep"] == ((1,), (2,), (2,))
    assert profiles["text_states"] == ((1, 16, 48), (2, 16, 48), (2, 16, 48))
    assert profiles["ref_latents"] == ((1, 1, C, 4, 4), (2, 2, C, 8, 6), (2, 3, C, 8, 8))


def test_dit_profile_without_cfg_keeps_the_request_batch(tiny, shapes):
    import dataclasses

    no_cfg = dataclasses.replace(shapes, cfg=False)
    profiles = profiles_for(DIT.spec(tiny), no_cfg, tiny)
    assert profiles["timestep"] == ((1,), (1,), (1,))


def test_vae_profiles(tiny, shapes):
    encoder = profiles_for(VAE_ENCODER.spec(tiny), shapes, tiny)
    # each reference is its own call, a one-frame video: batch 1 whatever the refs, frames 1
    assert encoder == {"video": ((1, 3, 1, 32, 32), (1, 3, 1, 64, 48), (1, 3, 1, 64, 64))}
    spec = VAE_DECODER.spec(tiny)
    decoder = profiles_for(spec, shapes, tiny)
    assert list(decoder) == list(spec.input_names)
    # the chunk step: one latent frame per call (decode_chunk 1), whatever the video's length
    assert decoder["latents"] == ((1, C, 1, 4, 4), (1, C, 1, 8, 6), (1, C, 1, 8, 8))
    assert decoder["first"] == ((1,), (1,), (1,))
    # each state: 2 frames of its conv's input, at its conv's scale of the latent size
    scales = set()
    for name in spec.input_names[2:]:
        low, opt, high = decoder[name]
        scale = low[3] // 4
        scales.add(scale)
        assert low[0] == 1 and low[2] == opt[2] == high[2] == 2
        assert (low[3:], opt[3:], high[3:]) == tuple((scale * h, scale * w) for h, w in
                                                     ((4, 4), (8, 6), (8, 8))), name
    assert scales == {1, 2, 4, 8}


def test_the_decoder_profile_follows_the_decode_chunk(tiny, shapes):
    """Chunks of 2 latent frames: frames 5..9 are 2..3 latent frames, every call takes 2
    (a shorter tail is padded: models/vae_chunks.py iter_chunks)."""
    two = dataclasses.replace(tiny, sampler=dataclasses.replace(tiny.sampler, decode_chunk=2))
    decoder = profiles_for(VAE_DECODER.spec(two), shapes, two)
    assert [p[2] for p in decoder["latents"]] == [2, 2, 2]
    four = dataclasses.replace(tiny, sampler=dataclasses.replace(tiny.sampler, decode_chunk=4))
    assert [p[2] for p in profiles_for(VAE_DECODER.spec(four), shapes, four)["latents"]] == \
        [2, 2, 3]  # a chunk longer than the video: the whole video in one call


def test_a_tiled_decoders_profile_is_one_tile(tiny, shapes):
    """decode_tiles: every call takes one tile of the chunk, so the profile's latents and
    states are a tile's (at most `tile` latent pixels a side; a smaller frame is one tile
    of its own size), whatever the video's size: what bounds the engine's activation."""
    from cinema_trt.models.presets import Decoding

    tiled = Decoding(tile=6, overlap=2).apply(tiny)
    spec = VAE_DECODER.spec(tiled)
    decoder = profiles_for(spec, shapes, tiled)
    # min 32x32 px (4x4 latents), opt 64x48 (8x6), max 64x64 (8x8), in tiles of 6
    assert decoder["latents"] == ((1, C, 1, 4, 4), (1, C, 1, 6, 6), (1, C, 1, 6, 6))
    for name in spec.input_names[2:]:
        low, _, high = decoder[name]
        scale = low[3] // 4
        assert high[3:] == (6 * scale, 6 * scale), name


def test_text_stage_profiles(tiny, shapes):
    mllm = profiles_for(MLLM.spec(tiny), shapes, tiny)
    assert mllm["input_ids"] == ((1, 8), (1, 100), (1, 300))
    assert mllm["attention_mask"] == mllm["input_ids"]
    # the negative prompt has no images: zero rows at min; 16 patches per image after
    assert mllm["pixel_values"] == ((0, PATCH_DIM), (32, PATCH_DIM), (48, PATCH_DIM))
    assert mllm["image_grid_thw"] == ((0, 3), (2, 3), (3, 3))
    connector = profiles_for(CONNECTOR.spec(tiny), shapes, tiny)
    assert connector == {"hidden_states": ((1, 8, 64), (1, 100, 64), (1, 300, 64)),
                         "attention_mask": ((1, 8), (1, 100), (1, 300))}


def test_split_mllm_profiles(tiny, shapes):
    vision_graph, text_graph = MLLM.graphs
    vision = profiles_for(vision_graph.spec(tiny), shapes, tiny)
    # the vision graph only runs with images: 1 image .. 3 refs, 16 patches each
    assert vision["pixel_values"] == ((16, PATCH_DIM), (32, PATCH_DIM), (48, PATCH_DIM))
    assert vision["segment_ids"] == ((16,), (32,), (48,))
    text = profiles_for(text_graph.spec(tiny), shapes, tiny)
    assert text["position_ids"] == ((3, 1, 8), (3, 1, 100), (3, 1, 300))


def test_default_profiles_cover_what_the_tiny_pipeline_feeds_the_mllm(tiny):
    """The processor-derived seq range holds the negative prompt and a 4-reference prompt."""
    from cinema_trt.models.mllm import build_processor, prepare_inputs

    processor = build_processor(tiny.mllm)
    image = Image.fromarray(np.full((80, 60, 3), 128, np.uint8))
    prompt = "a person walks a dog along the beach at sunset, the camera tracks left " * 3
    profiles = profiles_for(MLLM.spec(tiny), default_shapes(tiny), tiny)
    for text, images in (("", []), (prompt, [image] * 4), ("a cat", [image])):
        inputs = prepare_inputs(processor, tiny.mllm, text, images)
        for name, tensor in inputs.items():
            low, _, high = profiles[name]
            assert all(lo <= v <= hi for lo, v, hi in zip(low, tensor.shape, high, strict=True)), \
                (name, tuple(tensor.shape), low, high)


def test_defaults_are_the_presets_sampler_shapes(tiny):
    shapes = default_shapes(tiny)
    s = tiny.sampler
    assert (shapes.frames, shapes.height, shapes.width) == (
        Dim(s.frames, s.frames, s.frames), Dim(s.height, s.height, s.height),
        Dim(s.width, s.width, s.width))
    assert shapes.refs == Dim(1, 2, tiny.dit.max_refs)
    assert shapes.batch == Dim(1, 1, 1) and shapes.cfg


def test_yaml_overrides_some_dims_and_defaults_the_rest(tmp_path, tiny):
    path = tmp_path / "profiles.yaml"
    path.write_text("preset: tiny\nframes: {min: 1, opt: 5, max: 9}\nheight: 32\nrefs: 1\n")
    shapes = load_shapes(path, tiny)
    assert shapes.frames == Dim(1, 5, 9)
    assert shapes.height == Dim(32, 32, 32)  # one int: a static dim
    assert shapes.width == default_shapes(tiny).width
    # seq was not given, so its image-token share follows the new refs range
    assert shapes.seq.max < default_shapes(tiny).seq.max
    assert shapes.source == str(path)


def test_no_profile_file_means_the_presets_defaults(tiny):
    assert load_shapes(None, tiny) == default_shapes(tiny)


@pytest.mark.parametrize("text, message", [
    ("frames: {min: 1, opt: 5}", "exactly the keys min, opt, max"),
    ("frames: {min: 9, opt: 5, max: 9}", "min <= opt <= max"),
    ("frames: {min: 1, opt: 6, max: 9}", "frames.opt: frames=6 must be 1 + 4k"),
    ("height: {min: 40, opt: 64, max: 64}", "height.min=40 must be a multiple of 16"),
    ("width: 0", "width.min=0 must be a positive integer"),
    ("refs: {min: 1, opt: 2, max: 5}", "refs.max=5 exceeds the model's max_refs=4"),
    ("seq: 1.5", "seq must be an int or a mapping"),
    ("batch: true", "batch=True must be an int"),
    ("heigth: 64", "unknown keys ['heigth']"),
    ("preset: small", "preset 'small' does not match the exported model's preset 'tiny'"),
    ("cfg: maybe", "cfg='maybe' must be true or false"),
    ("- frames", "expected a mapping"),
    ("frames: {min: 1", "not valid YAML"),
])
def test_yaml_errors_name_the_file_key_and_constraint(tmp_path, tiny, text, message):
    path = tmp_path / "profiles.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as error:
        load_shapes(path, tiny)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_missing_profile_file(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="profiles.yaml not found"):
        load_shapes(tmp_path / "profiles.yaml", tiny)


def test_unknown_stage_is_refused(tiny):
    spec = dataclasses.replace(DIT.spec(tiny), name="unet")
    with pytest.raises(ValueError, match="unknown stage 'unet'"):
        profiles_for(spec, shapes_from_dict({}, tiny), tiny)
