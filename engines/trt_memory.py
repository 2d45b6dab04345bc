"""Scratch memory that the pipeline's TensorRT engines share: stages never run concurrently,
so one activation buffer sized to the largest engine serves them all (engines/README.md)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class SharedDeviceMemory:
    """One scratch buffer for every engine that runs back to back on one stream.

    Stages of the pipeline never run concurrently, so their TensorRT activations can share
    memory sized to the largest engine instead of one allocation per engine. All sharing
    runners use this object's stream; growing the buffer bumps `generation` so runners
    re-point their contexts (and drop CUDA graphs that captured the old address).
    """

    def __init__(self, device: str | torch.device = "cuda"):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.generation = 0
        self._buffer: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.numel()

    def reserve(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            self.stream.synchronize()  # the old buffer may still be in use
            self._buffer = None
            with torch.cuda.stream(self.stream):
                self._buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            self.generation += 1
            log.info("shared TensorRT scratch memory: %.1f MiB", nbytes / 2 ** 20)

    @property
    def pointer(self) -> int:
        # no buffer: every sharing engine reported 0 bytes of scratch (null is valid then)
        return 0 if self._buffer is None else self._buffer.data_ptr()
