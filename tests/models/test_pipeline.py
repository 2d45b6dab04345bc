"""The whole tiny pipeline on PyTorch: determinism, shapes, validation, weights round trip."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cinema_trt.models.factory import (
    build_models,
    load_models,
    save_models,
    torch_pipeline,
    torch_runners,
)
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest, video_to_uint8
from cinema_trt.models.presets import get_preset
from cinema_trt.models.sampler import GenerationCancelled
from cinema_trt.models.stages import VAE_DECODER

PROMPT = "two friends play in the park"


@pytest.fixture(scope="module")
def refs():
    return [load_image(p) for p in sample_references()]


@pytest.fixture(scope="module")
def pipeline():
    return torch_pipeline("tiny")


def request(refs, **overrides):
    fields = dict(frames=5, height=32, width=48, steps=2, guidance=4.0, seed=0)
    fields.update(overrides)
    return GenerationRequest(prompt=fields.pop("prompt", PROMPT), refs=tuple(refs), **fields)


def test_same_seed_gives_identical_frames_and_another_seed_does_not(pipeline, refs):
    a = pipeline.generate(request(refs[:2]))
    b = pipeline.generate(request(refs[:2]))
    c = pipeline.generate(request(refs[:2], seed=1))
    assert a.dtype == np.uint8 and a.shape == (5, 32, 48, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_one_to_four_subjects_work_with_one_set_of_weights(pipeline, refs, k):
    assert pipeline.generate(request(refs[:k], steps=1)).shape == (5, 32, 48, 3)


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_frame_counts_follow_the_causal_vae(pipeline, refs, frames):
    video = pipeline.generate(request(refs[:1], frames=frames, height=16, width=16, steps=1))
    assert video.shape == (frames, 16, 16, 3)


def test_changing_one_reference_image_changes_the_video(pipeline, refs):
    base = pipeline.generate(request(refs[:2]))
    swapped = pipeline.generate(request([refs[0], refs[2]]))
    # uint8 frames: any change of the reference tokens moves many pixels
    assert np.mean(base != swapped) > 0.1


def test_changing_the_prompt_changes_the_video(pipeline, refs):
    base = pipeline.generate(request(refs[:2]))
    other = pipeline.generate(request(refs[:2], prompt="a cat sleeps on a sofa"))
    assert np.mean(base != other) > 0.1


@pytest.mark.parametrize("overrides,message", [
    (dict(frames=6), r"frames=6 must be 1 \+ 4k"),
    (dict(height=40), "height=40 must be a positive multiple of 16"),
    (dict(width=0), "width=0 must be a positive multiple of 16"),
    (dict(steps=0), "steps=0 must be in 1..1000"),
    (dict(guidance=float("nan")), "guidance=nan must be a finite number"),
    (dict(prompt="  "), "prompt must not be empty"),
    (dict(prompt="x" * 5000), "prompt has 5000 characters"),
])
def test_invalid_requests_name_the_constraint(pipeline, refs, overrides, message):
    with pytest.raises(ValueError, match=message):
        pipeline.generate(request(refs[:1], **overrides))


@pytest.mark.parametrize("k", [0, 5])
def test_reference_count_outside_1_to_4_is_rejected(pipeline, refs, k):
    many = (refs * 2)[:k]
    with pytest.raises(ValueError, match=f"got {k} reference images; between 1 and 4"):
        pipeline.generate(request(many))


def test_references_must_be_rgb_uint8(pipeline, refs):
    with pytest.raises(ValueError, match="reference 2 must be a uint8"):
        pipeline.generate(request([refs[0], refs[1].astype(np.float32)]))


def test_stage_timings_are_recorded(pipeline, refs):
    pipeline.generate(request(refs[:1], steps=1))
    assert set(pipeline.last_timings) == {"mllm", "connector", "vae_encoder", "dit",
                                          "vae_decoder"}
    assert all(t > 0 for t in pipeline.last_timings.values())


class Recording:
    """A runner that records the inputs of each call before passing it on."""

    def __init__(self, runner):
        self.name, self.runner, self.calls = runner.name, runner, []

    def run(self, inputs):
        self.calls.append(dict(inputs))
        return self.runner.run(inputs)


def chunked_pipeline(chunk: int) -> tuple[CinemaPipeline, Recording]:
    config = get_preset("tiny")
    config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler,
                                                                     decode_chunk=chunk))
    models = build_models(config)
    runners = torch_runners(models)
    decoder = Recording(runners[VAE_DECODER.name])
    runners[VAE_DECODER.name] = decoder
    return CinemaPipeline(config, runners, models.processor), decoder


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_frames_arrive_chunk_by_chunk_and_make_the_one_shot_video(refs, chunk):
    """17 frames are 5 latent frames: chunks of 1, 2 (the tail padded) and 3."""
    pipeline, decoder = chunked_pipeline(chunk)
    arrived = []
    video = pipeline.generate(request(refs[:1], frames=17, steps=1),
                              frames=lambda frames, start: arrived.append((start, frames)))
    calls = -(-5 // chunk)
    assert len(arrived) == len(decoder.calls) == calls
    # every call of one decode has one shape (the engine profile's), and only the first
    # call is flagged first
    assert {tuple(c["latents"].shape) for c in decoder.calls} == {(1, 16, chunk, 4, 6)}
    assert [bool(c["first"]) for c in decoder.calls] == [True] + [False] * (calls - 1)
    starts = [start for start, _ in arrived]
    assert starts == [0, *np.cumsum([len(f) for _, f in arrived])[:-1]]
    assert np.array_equal(np.concatenate([f for _, f in arrived]), video)
    # the one-shot decode of the latents the decoder was given (their unpadded frames)
    latents = torch.cat([c["latents"] for c in decoder.calls], dim=2)[:, :, :5]
    with torch.no_grad():
        one_shot = video_to_uint8(decoder.runner.module.decoder(latents))
    # uint8 frames of float outputs 1e-6 apart: a pixel may round the other way
    difference = np.abs(video.astype(int) - one_shot.astype(int))
    assert video.shape == one_shot.shape == (17, 32, 48, 3)
    assert difference.max() <= 1 and np.mean(difference) < 1e-3


def test_tiled_frames_arrive_after_each_chunks_tiles(refs):
    """decode_tiles: every decoder call takes one tile (4x4 latents of the 4x6 frame, 2
    tiles), time-major, and each chunk's frames reach `frames` once its 2 tiles are decoded,
    before the next chunk's first call."""
    from cinema_trt.models.presets import Decoding

    config = Decoding(tile=4, overlap=2).apply(get_preset("tiny"))
    models = build_models(config)
    runners = torch_runners(models)
    decoder = Recording(runners[VAE_DECODER.name])
    runners[VAE_DECODER.name] = decoder
    pipeline = CinemaPipeline(config, runners, models.processor)
    calls_at = []
    video = pipeline.generate(request(refs[:1], frames=9, steps=1),
                              frames=lambda frames, start: calls_at.append(len(decoder.calls)))
    assert video.shape == (9, 32, 48, 3)
    assert {tuple(c["latents"].shape) for c in decoder.calls} == {(1, 16, 1, 4, 4)}
    assert [bool(c["first"]) for c in decoder.calls] == [True, True] + [False] * 4
    assert calls_at == [2, 4, 6]


def test_a_decode_chunk_must_be_a_positive_int():
    config = get_preset("tiny")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"decode_chunk={bad!r} must be a positive"):
            dataclasses.replace(config.sampler, decode_chunk=bad)


def test_a_stop_during_the_decode_cancels_it(refs):
    pipeline, decoder = chunked_pipeline(1)
    arrived = []

    def stop() -> bool:
        return len(arrived) >= 2  # after the second decoded chunk

    with pytest.raises(GenerationCancelled, match="cancelled after 5 decoded frames"):
        pipeline.generate(request(refs[:1], frames=17, steps=1), should_stop=stop,
                          frames=lambda frames, start: arrived.append(start))
    assert arrived == [0, 1] and len(decoder.calls) == 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    models = build_models(get_preset("tiny"), seed=3)
    folder = save_models(models, tmp_path_factory.mktemp("weights"))
    return models, folder


def test_save_then_load_reproduces_every_stage_bit_for_bit(saved, refs):
    models, folder = saved
    loaded = load_models(folder, get_preset("tiny"))
    for (name, a), (_, b) in zip(models.__dict__.items(), loaded.__dict__.items(), strict=True):
        if isinstance(a, torch.nn.Module):
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys(), name
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    original = CinemaPipeline(models.config, torch_runners(models), models.processor)
    reloaded = torch_pipeline("tiny", weights=folder)
    assert np.array_equal(original.generate(request(refs[:2])),
                          reloaded.generate(request(refs[:2])))


def test_a_checkpoint_with_a_wrong_shape_names_the_tensor(saved, tmp_path):
    _, folder = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in folder.iterdir():
        (broken / item.name).symlink_to(item)
    tensors = load_file(folder / "dit.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(3, 3)
    del tensors[sorted(tensors)[1]]
    (broken / "dit.safetensors").unlink()
    save_file(tensors, broken / "dit.safetensors")
    with pytest.raises(ValueError) as error:
        load_models(broken)
    second = sorted(load_file(folder / "dit.safetensors"))[1]
    assert name in str(error.value) and second in str(error.value)


def test_weights_of_another_preset_are_refused(saved):
    _, folder = saved
    with pytest.raises(ValueError, match=r"saved for preset 'tiny': mllm\..*preset 'small'"):
        load_models(folder, get_preset("small"))
