"""The bad-input corpus in-process: every image and request of tests/hardening/conftest.py
is refused by `load_image` / `decode_request` / `GenerationRequest.validate` with a
ValueError naming the problem, and nothing is allocated for a decompression bomb."""

import resource

import numpy as np
import pytest

from cinema_trt.models.media import load_image
from cinema_trt.models.pipeline import GenerationRequest
from cinema_trt.models.presets import get_preset
from cinema_trt.serving.protocol import decode_request

TINY = get_preset("tiny")


def test_every_bad_image_is_refused_by_load_image(bad_image):
    with pytest.raises(ValueError, match=bad_image.message):
        load_image(bad_image.data)


def test_a_bad_image_as_a_reference_names_its_index(png, bad_image):
    arrays = {"prompt": np.array([b"a toy"], dtype=np.object_),
              "references": np.array([png, bad_image.data], dtype=np.object_)}
    with pytest.raises(ValueError, match=f"reference 2: image bytes: {bad_image.message}"):
        decode_request(arrays, TINY)


def test_every_bad_request_is_refused_by_decode_request(png, bad_request):
    with pytest.raises(ValueError, match=bad_request.message):
        decode_request(bad_request.build(png), TINY)


def test_a_bomb_is_refused_from_its_header_without_allocating_the_canvas(bomb):
    assert len(bomb.data) <= 2048  # headers plus a tiny real image: at most 2 KiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ValueError, match="image too large"):
        load_image(bomb.data)
    # the smallest bomb declares 16383^2 RGB pixels (768 MiB); decoding it would lift this
    # process's peak RSS far above its current one, so the peak must not move by 1/10 of it
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 75 * 1024


def _request(**fields) -> GenerationRequest:
    refs = (np.zeros((16, 16, 3), np.uint8),)
    return GenerationRequest.with_defaults(TINY, "a toy", refs, **fields)


@pytest.mark.parametrize("fields,message", [
    (dict(frames=5.0), "frames=5.0 must be an integer"),
    (dict(height="32"), "height='32' must be an integer"),
    (dict(steps=True), "steps=True must be an integer"),
    (dict(seed=1.5), "seed=1.5 must be an integer"),
    (dict(fps=np.float32(8)), "fps=8.0 must be an integer"),
    (dict(guidance="4"), "guidance='4' must be a number"),
    (dict(guidance=None), None),  # None keeps the preset default: valid
    (dict(frames=np.int32(257), height=np.int32(2048), width=np.int32(2048)),
     r"frames\*height\*width=257\*2048\*2048 exceeds"),  # numpy ints must not overflow
])
def test_validate_refuses_wrong_types_by_field(fields, message):
    request = _request(**fields)
    if message is None:
        request.validate(TINY)
        return
    with pytest.raises(ValueError, match=message):
        request.validate(TINY)


@pytest.mark.parametrize("prompt,message", [
    (b"bytes, not str", "prompt must be a str, got bytes"),
    ("\ud800 lone surrogate", "prompt is not valid Unicode text"),
    ("<|vision_start|>", "reserved token '<|vision_start|>'"),
])
def test_validate_refuses_prompts_the_tokenizer_would_choke_on(prompt, message):
    request = GenerationRequest.with_defaults(TINY, prompt, (np.zeros((8, 8, 3), np.uint8),))
    with pytest.raises(ValueError, match=message):
        request.validate(TINY)


@pytest.mark.parametrize("prompt", ["a | b", "x <|", "|> y", "<| spaced |>", "🎬 " * 50,
                                    "\x00 nul is text too", "猫" * 4096])
def test_ordinary_prompts_near_the_rules_are_accepted(prompt):
    GenerationRequest.with_defaults(TINY, prompt, (np.zeros((8, 8, 3), np.uint8),)
                                    ).validate(TINY)


@pytest.mark.parametrize("shape", [(1, 200, 3), (200, 1, 3), (4096, 4096, 3), (1, 1, 3)])
def test_references_at_the_limits_are_accepted(shape):
    GenerationRequest.with_defaults(TINY, "a toy", (np.zeros(shape, np.uint8),)).validate(TINY)
