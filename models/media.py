"""Image and video I/O: safe image decoding, MP4 writing (PyAV) with GIF / PNG fallbacks."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

# Decoding a "decompression bomb" (a tiny file declaring a huge canvas) would exhaust memory
# before any size check could run, so images above this many pixels are refused up front.
MAX_IMAGE_PIXELS = 4096 * 4096
# Only the formats browsers and cameras produce are decoded: every other PIL plugin is
# parser code exposed to untrusted bytes for no use (EPS even runs Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def load_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode a PNG/JPEG/WebP/GIF/BMP file or encoded bytes to uint8 RGB (H, W, 3)."""
    label = "image bytes" if isinstance(source, (bytes, bytearray)) else str(source)
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and 2x; treat the warning as an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data, formats=IMAGE_FORMATS) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{label}: image is {image.width}x{image.height}; at most "
                                     f"{MAX_IMAGE_PIXELS} pixels are accepted")
                return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"reference image not found: {label}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{label}: not a readable image ({error}); accepted formats: "
                         f"{', '.join(IMAGE_FORMATS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{label}: image too large ({error})") from None


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_references() -> list[Path]:
    """The bundled sample reference images (four simple subjects), sorted by name."""
    # beside this file (package data): `cinema_trt.models` is a namespace package, and
    # importlib.resources cannot read one under setuptools' editable finder on Python 3.11
    return sorted((Path(__file__).parent / "assets").glob("*.png"))


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 MP4 bytes (yuv420p, so height and width must be even; ours are multiples of 16)."""
    import av

    _check_frames(frames)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> Path:
    """Write frames by extension: .mp4 (H.264), .gif, or a folder of PNGs (no extension)."""
    path = Path(path)
    _check_frames(frames)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        data = encode_mp4(frames, fps)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0)
    elif suffix == "":
        path.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(path / f"frame_{i:04d}.png")
    else:
        raise ValueError(f"unsupported output {path.name!r}: use .mp4, .gif, or a folder name "
                         "without extension for PNG frames")
    log.info("wrote %s (%d frames, %dx%d, %d fps)", path, len(frames), frames.shape[2],
             frames.shape[1], fps)
    return path
