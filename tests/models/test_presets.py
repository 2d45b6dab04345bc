"""Presets are exact-name frozen configs; shape rules name the violated constraint."""

import dataclasses
import json

import pytest

from cinema_trt.models.presets import (
    CinemaConfig,
    check_num_refs,
    get_preset,
    latent_frames,
    latent_size,
    token_counts,
)


def test_presets_are_looked_up_by_exact_name_only():
    assert get_preset("tiny").name == "tiny"
    with pytest.raises(ValueError, match=r"unknown preset 'Tiny'.*\['cinema', 'small', 'tiny'\]"):
        get_preset("Tiny")


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("tiny").dit.depth = 3


def test_cinema_preset_has_paper_scale_shapes():
    c = get_preset("cinema")
    assert (c.dit.depth, c.dit.width, c.dit.heads, c.dit.head_dim) == (42, 3072, 48, 64)
    assert (c.aligner.depth, c.aligner.width, c.aligner.heads) == (6, 768, 8)
    assert (c.aligner.num_queries, c.aligner.out_dim, c.dit.text_len) == (226, 4096, 226)
    assert c.vae.latent_channels == 16
    # 45 frames at 480x720 -> 12 latent frames of 60x90 -> 12 * 30 * 45 tokens
    assert latent_frames(45) == 12 and latent_size(480, 720) == (60, 90)
    counts = token_counts(c, 45, 480, 720, num_refs=2)
    assert (counts.text, counts.reference, counts.video) == (226, 2 * 1350, 16200)


@pytest.mark.parametrize("frames,expected", [(1, 1), (5, 2), (9, 3), (17, 5)])
def test_causal_vae_maps_1_plus_4k_frames_to_1_plus_k(frames, expected):
    assert latent_frames(frames) == expected


@pytest.mark.parametrize("frames", [0, 2, 6, 16])
def test_frames_not_1_plus_4k_are_rejected(frames):
    with pytest.raises(ValueError, match=rf"frames={frames} must be 1 \+ 4k"):
        latent_frames(frames)


@pytest.mark.parametrize("height,width", [(40, 64), (64, 72), (0, 64)])
def test_sizes_must_be_multiples_of_16(height, width):
    with pytest.raises(ValueError, match="must be a positive multiple of 16"):
        latent_size(height, width)


@pytest.mark.parametrize("k", [0, 5])
def test_reference_count_outside_1_to_max_is_rejected(k):
    with pytest.raises(ValueError, match=f"got {k} reference images; between 1 and 4"):
        check_num_refs(k, 4)


def test_tiny_token_counts():
    counts = token_counts(get_preset("tiny"), frames=5, height=64, width=96, num_refs=3)
    # latent 2 x 8 x 12, patch 1x2x2 -> 4 x 6 = 24 tokens per frame
    assert (counts.text, counts.reference, counts.video, counts.total) == (16, 72, 48, 136)


@pytest.mark.parametrize("name", ["tiny", "small", "cinema"])
def test_config_json_round_trip_is_exact(name):
    config = get_preset(name)
    assert CinemaConfig.from_dict(json.loads(config.to_json())) == config


def test_unknown_config_fields_are_rejected():
    data = json.loads(get_preset("tiny").to_json())
    data["dit"]["depht"] = 3
    with pytest.raises(ValueError, match=r"DiTConfig: unknown fields \['depht'\]"):
        CinemaConfig.from_dict(data)


def test_the_decoding_travels_in_the_config_json():
    """cinema_config.json carries the decoder's tiling (the served orchestrator reads it):
    a nested {tile, overlap} that reads back as the Tiling, not a dict."""
    from cinema_trt.models.presets import Decoding, Tiling

    tiled = Decoding(chunk=2, tile=32).apply(get_preset("tiny"))
    data = json.loads(tiled.to_json())
    assert data["sampler"]["decode_tiles"] == {"tile": 32, "overlap": 8}
    back = CinemaConfig.from_dict(data)
    assert back == tiled and back.sampler.decode_tiles == Tiling(32, 8)
    data["sampler"]["decode_tiles"]["overlop"] = 2
    with pytest.raises(ValueError, match=r"Tiling: unknown fields \['overlop'\]"):
        CinemaConfig.from_dict(data)


@pytest.mark.parametrize("fields,message", [
    (dict(decode_tiles={"tile": 32}), "must be a Tiling(tile, overlap)"),
    (dict(decode_tiles=(32, 8)), "must be a Tiling(tile, overlap)"),
])
def test_decode_tiles_must_be_a_tiling(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(get_preset("tiny").sampler, **fields)


@pytest.mark.parametrize("decoding,message", [
    (dict(tile=8, overlap=8), "need 0 < overlap < tile"),
    (dict(tile=-1), "need 0 < overlap < tile"),
    (dict(tile=16, overlap=2.5), "overlap=2.5 must be an integer"),
    (dict(overlap=4), "needs a tile size"),
    (dict(tile=0, overlap=4), "needs a tile size"),
    (dict(chunk=0), "decode_chunk=0 must be a positive"),
])
def test_bad_decodings_name_the_constraint(decoding, message):
    from cinema_trt.models.presets import Decoding

    with pytest.raises(ValueError, match=message):
        Decoding(**decoding).apply(get_preset("tiny"))


def test_a_decoding_keeps_what_it_does_not_set():
    from cinema_trt.models.presets import Decoding, Tiling

    tiny = get_preset("tiny")
    assert Decoding().apply(tiny) == tiny and not Decoding().given
    tiled = Decoding(tile=16, overlap=4).apply(tiny)
    assert Decoding(chunk=3).apply(tiled).sampler.decode_tiles == Tiling(16, 4)
    assert Decoding(tile=12).apply(tiled).sampler.decode_tiles == Tiling(12, 4)
    assert Decoding(tile=0).apply(tiled).sampler.decode_tiles is None
    assert Decoding.of(tiled.sampler) == Decoding(1, 16, 4)
