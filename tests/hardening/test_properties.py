"""Property-based tests of the request validator (hypothesis).

- any valid request survives `encode_request` -> `decode_request` unchanged (guidance is
  FP32 on the wire, so it comes back as float32(guidance));
- any one field out of range is refused with a ValueError naming that field, both by
  `GenerationRequest.validate` and on the wire by `decode_request`;
- arbitrary bytes, and mutations of valid images, as references raise ValueError or
  decode: never any other exception.
"""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cinema_trt.models.media import load_image
from cinema_trt.models.pipeline import (
    MAX_FRAMES,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    MAX_STEPS,
    RESERVED_TOKEN,
    GenerationRequest,
)
from cinema_trt.models.presets import get_preset
from cinema_trt.serving.protocol import decode_request, encode_request

TINY = get_preset("tiny")
# no example database: it would write .hypothesis/ into whatever folder pytest runs in
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
INT32_MAX = 2 ** 31 - 1

prompts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300).filter(
    lambda p: p.strip() and not RESERVED_TOKEN.search(p))
images = st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2 ** 32 - 1)).map(
    lambda hws: np.random.default_rng(hws[2]).integers(0, 256, (hws[0], hws[1], 3), np.uint8))
# valid values of every field; sides stay small so frames * height * width is within its cap
VALID = {
    "frames": st.integers(0, (MAX_FRAMES - 1) // 4).map(lambda k: 1 + 4 * k),
    "height": st.integers(1, 16).map(lambda k: 16 * k),
    "width": st.integers(1, 16).map(lambda k: 16 * k),
    "steps": st.integers(1, MAX_STEPS),
    "guidance": st.floats(0, 100, allow_nan=False, width=32),
    "seed": st.integers(0, 2 ** 63 - 1),
    "fps": st.integers(1, 120),
}


def _bad_side(multiple: int, cap: int):
    """Not positive, not a multiple, or a multiple above the cap (all fit in INT32)."""
    return st.one_of(st.integers(-2 ** 31, 0),
                     st.integers(1, INT32_MAX).filter(lambda v: v % multiple),
                     st.integers(cap // multiple + 1, INT32_MAX // multiple).map(
                         lambda k: multiple * k))


# out-of-range values each field can carry on the wire (INT32 / INT64 / FP32)
INVALID = {
    "frames": st.one_of(st.integers(-2 ** 31, 0),
                        st.integers(2, INT32_MAX).filter(lambda f: (f - 1) % 4),
                        st.integers((MAX_FRAMES - 1) // 4 + 1, (INT32_MAX - 1) // 4).map(
                            lambda k: 1 + 4 * k)),
    "height": _bad_side(16, MAX_SIDE),
    "width": _bad_side(16, MAX_SIDE),
    "steps": st.one_of(st.integers(-2 ** 31, 0), st.integers(MAX_STEPS + 1, INT32_MAX)),
    "guidance": st.one_of(st.floats(max_value=-2.0 ** -10, width=32),
                          st.sampled_from([float("nan"), float("inf"), float("-inf")])),
    "seed": st.integers(-2 ** 63, -1),
    "fps": st.one_of(st.integers(-2 ** 31, 0), st.integers(121, INT32_MAX)),
}


@st.composite
def valid_requests(draw):
    params = {name: draw(strategy) for name, strategy in VALID.items()}
    refs = draw(st.lists(images, min_size=1, max_size=TINY.dit.max_refs))
    return draw(prompts), refs, draw(st.booleans()), params


@SETTINGS
@given(valid_requests())
def test_valid_requests_round_trip_through_the_wire_format(case):
    prompt, refs, return_mp4, params = case
    decoded = decode_request(encode_request(prompt, refs, return_mp4, **params), TINY)
    request = decoded.request
    assert decoded.return_mp4 == return_mp4
    assert request.prompt == prompt
    for name, value in params.items():
        assert getattr(request, name) == value, name  # guidance is drawn as a float32
    assert len(request.refs) == len(refs)
    for sent, received in zip(refs, request.refs, strict=True):
        np.testing.assert_array_equal(received, sent)  # PNG is lossless


@st.composite
def one_bad_field(draw):
    """A valid request with exactly one field out of range: (field, value, request)."""
    _, refs, _, params = draw(valid_requests())
    field = draw(st.sampled_from(sorted(INVALID)))
    params[field] = draw(INVALID[field])
    return field, params, refs


@SETTINGS
@given(one_bad_field())
def test_an_out_of_range_field_is_refused_naming_the_field(case):
    field, params, refs = case
    with pytest.raises(ValueError, match=field):
        GenerationRequest.with_defaults(TINY, "a toy", refs, **params).validate(TINY)
    with pytest.raises(ValueError, match=field):
        decode_request(encode_request("a toy", refs, **params), TINY)


@SETTINGS
@given(st.one_of(st.just(""), st.text(" \t\n", max_size=5),
                 st.text(min_size=MAX_PROMPT_CHARS + 1, max_size=MAX_PROMPT_CHARS + 50),
                 prompts.map(lambda p: p + "<|image_pad|>")))
def test_a_bad_prompt_is_refused_naming_the_prompt(prompt):
    refs = [np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match="prompt"):
        decode_request(encode_request(prompt, refs), TINY)


@SETTINGS
@given(st.lists(images, min_size=TINY.dit.max_refs + 1, max_size=8) | st.just([]))
def test_a_bad_reference_count_is_refused_naming_the_references(refs):
    with pytest.raises(ValueError, match="reference images; between 1 and 4"):
        decode_request(encode_request("a toy", refs), TINY)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = [_encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP")]


@st.composite
def mutated_images(draw):
    """A valid image with a few bytes overwritten, a slice cut out, or a tail dropped."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, len(data)))
    return bytes(data[:start] + data[end:]) if draw(st.booleans()) else bytes(data[:end])


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=4096) | mutated_images())
def test_any_bytes_as_an_image_decode_or_raise_value_error(data):
    try:
        image = load_image(data)
    except ValueError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@SETTINGS
@given(st.binary(max_size=2048) | mutated_images())
def test_any_bytes_as_a_reference_are_refused_by_index_or_accepted(data):
    arrays = encode_request("a toy", [SEEDS[0], data])
    try:
        decode_request(arrays, TINY)
    except ValueError as error:
        assert str(error).startswith("reference 2: "), error
