"""A streamed video is put back together exactly: every frame once, in order, or an error
that says which frames went missing."""

import numpy as np
import pytest

from cinema_trt.serving.frames import FrameAssembler
from cinema_trt.serving.protocol import FrameChunk

VIDEO = np.random.default_rng(0).integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)


def _chunk(start, stop, video=VIDEO, fps=8):
    return FrameChunk(video[start:stop], start, len(video), fps)


def _split(bounds, video=VIDEO):
    return [_chunk(a, b, video) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("bounds", [(0, 9), (0, 1, 5, 9), (0, 4, 8, 9), tuple(range(10))])
def test_chunks_of_any_split_assemble_the_video_and_reach_the_caller_in_order(bounds):
    seen = []
    frames = FrameAssembler(lambda c: seen.append((c.start, c.frames.copy(), c.total, c.fps)))
    for chunk in _split(bounds):
        assert not frames.complete
        frames.add(chunk)
    assert frames.complete
    np.testing.assert_array_equal(frames.video(), VIDEO)
    assert [s[0] for s in seen] == list(bounds[:-1])
    np.testing.assert_array_equal(np.concatenate([s[1] for s in seen]), VIDEO)
    assert {(s[2], s[3]) for s in seen} == {(9, 8)}  # every chunk names the video


def test_a_missing_chunk_is_an_error_not_a_short_video():
    frames = FrameAssembler()
    frames.add(_chunk(0, 4))
    with pytest.raises(ValueError, match="starts at frame 8, expected 4"):
        frames.add(_chunk(8, 9))
    with pytest.raises(ValueError, match="ended after 4 of 9 frames"):
        frames.video()


def test_a_repeated_chunk_in_one_attempt_is_an_error():
    frames = FrameAssembler()
    frames.add(_chunk(0, 4))
    with pytest.raises(ValueError, match="starts at frame 0, expected 4"):
        frames.add(_chunk(0, 4))


def test_chunks_of_another_video_are_refused():
    frames = FrameAssembler()
    frames.add(_chunk(0, 4))
    smaller = VIDEO[:, :8]
    with pytest.raises(ValueError, match="after chunks of a 9-frame"):
        frames.add(FrameChunk(smaller[4:8], 4, 9, 8))
    with pytest.raises(ValueError, match="at 4 fps"):
        frames.add(_chunk(4, 8, fps=4))


def test_a_resent_request_hands_on_only_the_frames_not_seen_before():
    seen = []
    frames = FrameAssembler(lambda c: seen.append((c.start, len(c.frames))))
    frames.begin_attempt()
    frames.add(_chunk(0, 4))
    frames.add(_chunk(4, 6))  # the replica failed here
    frames.begin_attempt()  # resubmitted: the same video streams from frame 0
    for chunk in _split((0, 4, 8, 9)):
        frames.add(chunk)
    assert seen == [(0, 4), (4, 2), (6, 2), (8, 1)]
    np.testing.assert_array_equal(frames.video(), VIDEO)


def test_a_resent_request_whose_frames_differ_is_refused():
    frames = FrameAssembler()
    frames.add(_chunk(0, 4))
    frames.begin_attempt()
    other = VIDEO.copy()
    other[2] ^= 1
    with pytest.raises(ValueError, match="frames 0..4 differ"):
        frames.add(_chunk(0, 4, video=other))


def test_without_keep_frames_are_handed_on_but_not_held():
    seen = []
    frames = FrameAssembler(lambda c: seen.append(c.frames), keep=False)
    for chunk in _split((0, 5, 9)):
        frames.add(chunk)
    assert frames.complete and sum(len(s) for s in seen) == 9
    with pytest.raises(ValueError, match="not kept"):
        frames.video()
