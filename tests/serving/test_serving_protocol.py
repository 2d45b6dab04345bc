"""The `cinema` request schema: what the client encodes is what the orchestrator decodes,
and every malformed request is refused with a message that names the problem."""

import numpy as np
import pytest

from cinema_trt.models.media import encode_png, load_image, sample_references
from cinema_trt.models.presets import get_preset
from cinema_trt.serving.protocol import (
    chunk_outputs,
    decode_request,
    encode_request,
    read_chunk,
)

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def refs():
    return [load_image(p) for p in sample_references()[:2]]


def test_encoded_request_decodes_to_the_same_generation_request(refs):
    arrays = encode_request("two toys dance", refs, return_mp4=True, steps=3, seed=7,
                            frames=9, height=32, width=48, fps=6, guidance=2.5)
    decoded = decode_request(arrays, TINY)
    r = decoded.request
    assert (r.prompt, r.steps, r.seed, r.frames, r.height, r.width, r.fps, r.guidance) == \
        ("two toys dance", 3, 7, 9, 32, 48, 6, 2.5)
    assert decoded.return_mp4
    # references travel as PNG: lossless, so the pixels survive exactly
    assert len(r.refs) == 2
    for sent, received in zip(refs, r.refs, strict=True):
        np.testing.assert_array_equal(received, sent)


def test_absent_parameters_take_the_preset_sampler_defaults(refs):
    decoded = decode_request(encode_request("a toy", refs[:1]), TINY)
    s = TINY.sampler
    r = decoded.request
    assert (r.frames, r.height, r.width, r.steps, r.guidance, r.fps, r.seed) == \
        (s.frames, s.height, s.width, s.steps, s.guidance, s.fps, 0)
    assert not decoded.return_mp4


def test_references_may_be_paths_bytes_or_arrays(refs):
    path = sample_references()[0]
    arrays = encode_request("a toy", [path, path.read_bytes(), load_image(path)])
    decoded = decode_request(arrays, TINY).request.refs
    for image in decoded[1:]:
        np.testing.assert_array_equal(image, decoded[0])


def _bad(refs, case):
    png = encode_png(refs[0])
    if case == "no references":
        return encode_request("x", [])
    if case == "too many references":
        return encode_request("x", [png] * (TINY.dit.max_refs + 1))
    if case == "corrupt image bytes":
        return encode_request("x", [png, b"\x89PNG but not really"])
    if case == "unsupported size":
        return encode_request("x", [png], height=40)
    if case == "non-UTF-8 prompt":
        return encode_request(b"caf\xe9", [png])
    if case == "zero steps":
        return encode_request("x", [png], steps=0)
    if case == "negative steps":
        return encode_request("x", [png], steps=-3)
    if case == "two seeds":
        arrays = encode_request("x", [png])
        arrays["seed"] = np.array([1, 2], dtype=np.int64)
        return arrays
    if case == "no prompt":
        arrays = encode_request("x", [png])
        del arrays["prompt"]
        return arrays
    raise AssertionError(case)


@pytest.mark.parametrize("case,message", [
    ("no references", "got 0 reference images; between 1 and 4"),
    ("too many references", "got 5 reference images; between 1 and 4"),
    ("corrupt image bytes", "reference 2: .*not a readable image"),
    ("unsupported size", "height=40 must be a positive multiple of 16"),
    ("non-UTF-8 prompt", "prompt is not valid UTF-8"),
    ("zero steps", "steps=0 must be in 1..1000"),
    ("negative steps", "steps=-3 must be in 1..1000"),
    ("two seeds", "input 'seed' must hold exactly one value"),
    ("no prompt", "input 'prompt' is required"),
])
def test_malformed_requests_are_refused_by_name(refs, case, message):
    with pytest.raises(ValueError, match=message):
        decode_request(_bad(refs, case), TINY)


def test_unknown_parameters_are_refused_on_the_client(refs):
    with pytest.raises(ValueError, match=r"unknown parameters \['stpes'\]"):
        encode_request("x", refs, stpes=3)


# --- streamed frames ---------------------------------------------------------------------


def test_stream_frames_is_a_flag_sent_only_when_asked_for(refs):
    # servers built before the flag refuse unknown inputs: a plain request must not carry it
    assert "stream_frames" not in encode_request("a toy", refs[:1])
    assert not decode_request(encode_request("a toy", refs[:1]), TINY).stream_frames
    decoded = decode_request(encode_request("a toy", refs[:1], stream_frames=True, steps=2),
                             TINY)
    assert decoded.stream_frames and not decoded.return_mp4 and decoded.request.steps == 2


def _request(frames=9, fps=6):
    from cinema_trt.models.pipeline import GenerationRequest

    return GenerationRequest.with_defaults(TINY, "a toy", (), frames=frames, fps=fps)


def test_a_chunk_reads_back_as_sent():
    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 32, 3), dtype=np.uint8)
    tensors = chunk_outputs(frames, 4, _request(frames=9, fps=6))
    assert sorted(tensors) == ["chunk", "chunk_info"]  # the names the model declares
    chunk = read_chunk(tensors.get)
    np.testing.assert_array_equal(chunk.frames, frames)
    assert (chunk.start, chunk.total, chunk.fps) == (4, 9, 6)
    assert read_chunk({"progress": np.array([1, 2], np.int32)}.get) is None  # not a chunk


@pytest.mark.parametrize("start,count", [(-1, 2), (8, 2), (0, 0), (9, 1)])
def test_a_chunk_outside_the_video_is_refused_on_both_sides(start, count):
    frames = np.zeros((count, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        chunk_outputs(frames, start, _request(frames=9))
    info = np.array([start, 9, 6], np.int32)
    with pytest.raises(ValueError, match="does not fit"):
        read_chunk({"chunk": frames, "chunk_info": info}.get)


@pytest.mark.parametrize("frames,info,message", [
    (np.zeros((1, 16, 16, 3), np.float32), [0, 1, 8], "must be uint8"),
    (np.zeros((1, 16, 16), np.uint8), [0, 1, 8], "must be uint8"),
    (np.zeros((1, 16, 16, 3), np.uint8), None, "needs `chunk_info`"),
    (np.zeros((1, 16, 16, 3), np.uint8), [0, 1], "needs `chunk_info`"),
    (np.zeros((1, 16, 16, 3), np.uint8), [0, 1, 0], "does not fit"),  # fps 0
])
def test_a_malformed_chunk_is_refused_by_the_client(frames, info, message):
    tensors = {"chunk": frames}
    if info is not None:
        tensors["chunk_info"] = np.array(info, np.int32)
    with pytest.raises(ValueError, match=message):
        read_chunk(tensors.get)
