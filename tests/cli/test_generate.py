"""`cinema-trt generate` end to end on the tiny preset: bundled PNGs + prompt -> MP4."""

import subprocess
import sys

import pytest

from cinema_trt.cli.main import main
from cinema_trt.models.media import sample_references


def test_generate_writes_an_mp4_with_the_requested_frames_and_size(tmp_path, read_video):
    out = tmp_path / "out.mp4"
    refs = [str(p) for p in sample_references()[:2]]
    code = main(["generate", "--preset", "tiny", "--ref", refs[0], "--ref", refs[1],
                 "--prompt", "two toys dance", "--frames", "9", "--height", "32",
                 "--width", "48", "--steps", "2", "--quiet", "-o", str(out)])
    assert code == 0
    video = read_video(out)
    assert video.shape == (9, 32, 48, 3)


def test_gif_and_png_frame_outputs(tmp_path):
    ref = str(sample_references()[0])
    common = ["generate", "--ref", ref, "--prompt", "a toy", "--frames", "5", "--height",
              "16", "--width", "16", "--steps", "1", "--quiet"]
    assert main(common + ["-o", str(tmp_path / "v.gif")]) == 0
    assert main(common + ["-o", str(tmp_path / "frames")]) == 0
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 5


@pytest.mark.parametrize("extra,message", [
    (["--frames", "6"], "frames=6 must be 1 + 4k"),
    (["--height", "40"], "height=40 must be a positive multiple of 16"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--decode-chunk", "0"], "decode_chunk=0 must be a positive number of latent frames"),
    (["--decode-tile", "4", "--decode-overlap", "4"], "need 0 < overlap < tile"),
    (["--decode-overlap", "2"], "a decode overlap (2) needs a tile size"),
])
def test_bad_arguments_exit_2_with_one_clear_line(tmp_path, extra, message):
    ref = str(sample_references()[0])
    result = subprocess.run(
        [sys.executable, "-m", "cinema_trt.cli", "generate", "--ref", ref, "--prompt", "x",
         "-o", str(tmp_path / "v.mp4"), *extra], capture_output=True, text=True, timeout=120,
        cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_a_missing_reference_file_is_reported(tmp_path):
    code = main(["generate", "--ref", str(tmp_path / "nope.png"), "--prompt", "x",
                 "-o", str(tmp_path / "v.mp4")])
    assert code == 2


def test_decode_flags_choose_the_in_process_decoding(tmp_path):
    """--decode-tile/--decode-overlap/--decode-chunk reach the pipeline's config: the PNG
    frames are the tiled pipeline's, bit for bit, and not the untiled video."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from cinema_trt.models.factory import torch_pipeline
    from cinema_trt.models.media import load_image
    from cinema_trt.models.presets import Decoding, get_preset

    refs = sample_references()[:1]
    out = tmp_path / "frames"
    assert main(["generate", "--ref", str(refs[0]), "--prompt", "a toy", "--frames", "9",
                 "--height", "32", "--width", "48", "--steps", "1", "--quiet",
                 "--decode-tile", "4", "--decode-overlap", "2", "--decode-chunk", "2",
                 "-o", str(out)]) == 0
    written = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("frame_*.png"))])
    tiny = get_preset("tiny")
    args = dict(frames=9, height=32, width=48, steps=1)
    image = (load_image(refs[0]),)
    tiled = Decoding(chunk=2, tile=4, overlap=2).apply(tiny)
    np.testing.assert_array_equal(written, torch_pipeline(tiled)("a toy", image, **args))
    untiled = torch_pipeline(dataclasses.replace(tiny))("a toy", image, **args)
    assert not np.array_equal(written, untiled)
