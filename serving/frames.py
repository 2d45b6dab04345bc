"""A streamed video put back together on the client, one `chunk` response at a time.

The server sends a request's chunks in order (serving/protocol.py), so each attempt's
chunks must start at frame 0 and follow on without a gap or an overlap. A request sent
again after its replica failed (ClientOptions.resubmit) streams the same video from frame 0
(same request, same seed): frames the caller already has are not handed to it twice, and
where they were kept they are checked to be the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from cinema_trt.serving.protocol import FrameChunk

# called with frames not handed on before: frames [start, start + t), the video's total
# frame count and frame rate (a writer opened at the first chunk needs both)
FramesFn = Callable[[FrameChunk], None]


class FrameAssembler:
    """Takes `FrameChunk`s as they arrive; hands each new frame once to `on_frames` and,
    with `keep`, holds the whole video for `video()`."""

    def __init__(self, on_frames: FramesFn | None = None, keep: bool = True):
        self.on_frames = on_frames
        self.keep = keep
        self.delivered = 0  # frames handed on, over all attempts
        self.position = 0  # frames received in this attempt
        self.total: int | None = None
        self.fps: int | None = None
        self._video: np.ndarray | None = None  # (total, H, W, 3) when keep
        self._shape: tuple[int, ...] | None = None  # (H, W, 3)

    def begin_attempt(self) -> None:
        """A (re)sent request streams from frame 0 again."""
        self.position = 0

    def add(self, chunk: FrameChunk) -> None:
        frames = chunk.frames
        if chunk.start != self.position:
            raise ValueError(f"chunk starts at frame {chunk.start}, expected {self.position}: "
                             "the stream lost or repeated frames")
        if self.total is None:
            self.total, self.fps, self._shape = chunk.total, chunk.fps, frames.shape[1:]
            if self.keep:
                self._video = np.empty((chunk.total, *frames.shape[1:]), np.uint8)
        elif (chunk.total, chunk.fps, frames.shape[1:]) != (self.total, self.fps, self._shape):
            raise ValueError(f"chunk of a {chunk.total}-frame {frames.shape[1:]} video at "
                             f"{chunk.fps} fps, after chunks of a {self.total}-frame "
                             f"{self._shape} one at {self.fps} fps")
        end = chunk.start + len(frames)
        seen = max(0, min(end, self.delivered) - chunk.start)  # frames an earlier try sent
        if seen and self._video is not None and not np.array_equal(
                frames[:seen], self._video[chunk.start:chunk.start + seen]):
            raise ValueError(f"the resent request's frames {chunk.start}..{chunk.start + seen} "
                             "differ from the first attempt's")
        self.position = end
        fresh = frames[seen:]
        if len(fresh) == 0:
            return
        if self._video is not None:
            self._video[self.delivered:end] = fresh
        self.delivered = end
        if self.on_frames is not None:
            self.on_frames(dataclasses.replace(chunk, frames=fresh, start=end - len(fresh)))

    @property
    def complete(self) -> bool:
        return self.total is not None and self.delivered == self.total

    def video(self) -> np.ndarray:
        """The whole uint8 (T, H, W, 3) video; ValueError while frames are missing."""
        if not self.complete:
            raise ValueError(f"the stream ended after {self.delivered} of "
                             f"{self.total if self.total is not None else '?'} frames")
        if self._video is None:
            raise ValueError("frames were not kept (FrameAssembler(keep=False))")
        return self._video
