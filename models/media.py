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


def check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")


class Mp4Writer:
    """H.264 MP4 (yuv420p, so height and width must be even; ours are multiples of 16),
    written frames at a time: `write` hands each batch to the encoder as it comes, so a
    video that arrives in chunks is encoded while later chunks are still being made (x264
    emits packets once its lookahead, 40 frames by default, is full). The same encoder and
    settings as one-shot encoding: the file does not depend on how the video was split."""

    def __init__(self, target: str | os.PathLike | io.BytesIO, fps: int):
        import av

        self._av = av
        self.container = av.open(target, mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "18"}
        self.size: tuple[int, int] | None = None  # (H, W), set by the first frames
        self.count = 0

    def write(self, frames: np.ndarray) -> None:
        """uint8 (T, H, W, 3) frames of this video's size (its callers check both)."""
        if self.size is None:
            self.size = frames.shape[1], frames.shape[2]
            self.stream.height, self.stream.width = self.size
        for frame in frames:
            for packet in self.stream.encode(self._av.VideoFrame.from_ndarray(frame,
                                                                              format="rgb24")):
                self.container.mux(packet)
        self.count += len(frames)

    def close(self) -> None:
        """Flush the encoder and write the index (the file is playable from now on)."""
        try:
            if self.count:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 MP4 bytes of the whole video (see `Mp4Writer`)."""
    check_frames(frames)  # before the encoder opens
    buffer = io.BytesIO()
    writer = Mp4Writer(buffer, fps)
    writer.write(frames)
    writer.close()
    return buffer.getvalue()


def check_video_path(path: str | os.PathLike) -> str:
    """The output's kind by its extension (.mp4, .gif, "" for a PNG folder); ValueError else."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".mp4", ".gif", ""):
        raise ValueError(f"unsupported output {Path(path).name!r}: use .mp4, .gif, or a "
                         "folder name without extension for PNG frames")
    return suffix


class VideoWriter:
    """A video file written as frames arrive, by extension: .mp4 (H.264, encoded as it
    goes), .gif (written at close: the format is one image list), or a folder of PNGs (no
    extension, one file per frame as it comes). An .mp4 grows under `<name>.partial` and
    takes its name at close, so a reader never sees half a video; `abort` removes it."""

    def __init__(self, path: str | os.PathLike, fps: int):
        self.path, self.fps = Path(path), fps
        self.suffix = check_video_path(self.path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._mp4: Mp4Writer | None = None
        self._gif: list[Image.Image] = []
        self.count = 0
        self.size: tuple[int, int] | None = None  # (H, W)

    def write(self, frames: np.ndarray) -> None:
        check_frames(frames)
        if self.size is not None and frames.shape[1:3] != self.size:
            raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]}; this video is "
                             f"{self.size[1]}x{self.size[0]}")
        self.size = frames.shape[1], frames.shape[2]
        if self.suffix == ".mp4":
            if self._mp4 is None:
                self._mp4 = Mp4Writer(self.partial, self.fps)
            self._mp4.write(frames)
        elif self.suffix == ".gif":
            self._gif += [Image.fromarray(f) for f in frames]
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(frames, start=self.count):
                Image.fromarray(frame).save(self.path / f"frame_{i:04d}.png")
        self.count += len(frames)

    def close(self) -> Path:
        if self.count == 0:
            raise ValueError(f"no frames were written to {self.path}")
        if self._mp4 is not None:
            self._mp4.close()
            os.replace(self.partial, self.path)
        elif self.suffix == ".gif":
            self._gif[0].save(self.path, save_all=True, append_images=self._gif[1:],
                              duration=max(1, round(1000 / self.fps)), loop=0)
        assert self.size is not None
        log.info("wrote %s (%d frames, %dx%d, %d fps)", self.path, self.count, self.size[1],
                 self.size[0], self.fps)
        return self.path

    def abort(self) -> None:
        """Drop an unfinished .mp4 (PNG frames already written stay: each is whole)."""
        if self._mp4 is not None:
            try:
                self._mp4.container.close()
            finally:
                self.partial.unlink(missing_ok=True)
                self._mp4 = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.abort()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int) -> Path:
    """Write frames by extension: .mp4 (H.264), .gif, or a folder of PNGs (no extension)."""
    with VideoWriter(path, fps) as writer:
        writer.write(frames)
        return writer.close()
