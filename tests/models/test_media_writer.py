"""A video written as its chunks arrive is the video written at once: the same MP4 bytes,
the same PNG files; a failed write leaves no file that looks finished."""

import numpy as np
import pytest
from PIL import Image

from cinema_trt.models.media import VideoWriter, check_video_path, encode_mp4, write_video

# noise-like frames, as untrained weights give: the hardest content for the encoder
VIDEO = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
SPLITS = [(0, 9), (0, 1, 5, 9), tuple(range(10))]


def _write_in_chunks(path, bounds, fps=8):
    writer = VideoWriter(path, fps)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        writer.write(VIDEO[a:b])
    return writer.close()


@pytest.mark.parametrize("bounds", SPLITS)
def test_an_mp4_written_chunk_by_chunk_is_the_one_shot_encoding_byte_for_byte(tmp_path,
                                                                              bounds,
                                                                              read_video):
    path = _write_in_chunks(tmp_path / "v.mp4", bounds)
    # same encoder, same settings, same frames in the same order: x264 is deterministic
    assert path.read_bytes() == encode_mp4(VIDEO, 8)
    assert read_video(path).shape == VIDEO.shape
    assert not (tmp_path / "v.mp4.partial").exists()


def test_an_mp4_grows_under_a_partial_name_until_closed(tmp_path):
    # x264 holds back up to its lookahead (40 frames by default) before the first packet
    # reaches the file: more frames than that show the bytes land before the close
    long = np.concatenate([VIDEO] * 6)  # 54 frames
    writer = VideoWriter(tmp_path / "v.mp4", 8)
    for start in range(0, len(long), 4):
        writer.write(long[start:start + 4])
    assert (tmp_path / "v.mp4.partial").stat().st_size > 0
    assert not (tmp_path / "v.mp4").exists()
    writer.close()
    assert (tmp_path / "v.mp4").exists() and not (tmp_path / "v.mp4.partial").exists()


def test_an_aborted_mp4_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="stream cut"):
        with VideoWriter(tmp_path / "v.mp4", 8) as writer:
            writer.write(VIDEO[:4])
            raise RuntimeError("stream cut")
    assert list(tmp_path.iterdir()) == []


def test_png_frames_are_written_as_they_come_and_numbered_across_chunks(tmp_path):
    writer = VideoWriter(tmp_path / "frames", 8)
    writer.write(VIDEO[:4])
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 4
    writer.write(VIDEO[4:])
    writer.close()
    files = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert [f.name for f in files][-1] == "frame_0008.png"
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(f)) for f in files]), VIDEO)


def test_a_gif_written_in_chunks_equals_one_written_at_once(tmp_path):
    _write_in_chunks(tmp_path / "a.gif", (0, 4, 9))
    write_video(tmp_path / "b.gif", VIDEO, 8)
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()


def test_frames_of_another_size_are_refused_and_nothing_is_kept(tmp_path):
    with pytest.raises(ValueError, match="frames are 24x32; this video is 48x32"):
        with VideoWriter(tmp_path / "v.mp4", 8) as writer:
            writer.write(VIDEO[:4])
            writer.write(VIDEO[4:, :, :24])
    assert list(tmp_path.iterdir()) == []


def test_a_video_without_frames_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no frames were written"):
        VideoWriter(tmp_path / "v.mp4", 8).close()


def test_unsupported_extensions_are_refused_before_any_frame(tmp_path):
    with pytest.raises(ValueError, match="unsupported output 'v.avi'"):
        check_video_path(tmp_path / "v.avi")
    with pytest.raises(ValueError, match="unsupported output"):
        VideoWriter(tmp_path / "v.avi", 8)
