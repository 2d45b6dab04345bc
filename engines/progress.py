"""Build progress and log forwarding for TensorRT, as plain Python (tested without it).

`trt_build.py` subclasses `trt.IProgressMonitor` / `trt.ILogger` with thin shims that call
these, because TensorRT is imported lazily and its base classes only exist once it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

log = logging.getLogger("cinema_trt.engines.tensorrt")

# trt.ILogger.Severity member names -> logging levels. TensorRT's INFO is chatty (every
# layer), so it is logged at DEBUG; VERBOSE even more so.
_SEVERITY_LEVELS = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR,
                    "WARNING": logging.WARNING, "INFO": logging.DEBUG,
                    "VERBOSE": logging.DEBUG - 5}


def log_level(severity_name: str) -> int:
    """Logging level for a TensorRT severity name ("ERROR", "Severity.WARNING", ...)."""
    return _SEVERITY_LEVELS.get(severity_name.rsplit(".", 1)[-1].upper(), logging.INFO)


class LogCapture:
    """What the process's TensorRT logger does with a message: forward it to logging at the
    mapped level, and keep it (every severity) for each build capturing the log, whose
    report parses the layer list and memory figures from it. Builds run one at a time per
    process (engines/stages.py), so a capture holds one build's messages."""

    def __init__(self):
        self._active: list[list[str]] = []
        self._lock = threading.Lock()

    def record(self, severity_name: str, message: str) -> None:
        log.log(log_level(severity_name), "%s", message)
        with self._lock:
            for messages in self._active:
                messages.append(message)

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        messages: list[str] = []
        with self._lock:
            self._active.append(messages)
        try:
            yield messages
        finally:
            with self._lock:
                self._active.remove(messages)


TENSORRT_LOG = LogCapture()


class BuildProgress:
    """Tracks TensorRT's nested build phases; top-level phases get a tqdm bar.

    TensorRT calls from several builder threads, so every callback takes a lock.
    `should_stop()` returning True cancels the build (step_complete returns False).
    """

    def __init__(self, stage: str, show_bars: bool = True,
                 should_stop: Callable[[], bool] | None = None, max_depth: int = 1):
        self.stage = stage
        self.show_bars = show_bars
        self.should_stop = should_stop
        self.max_depth = max_depth
        self.phases: dict[str, tuple[int, int]] = {}  # name -> (depth, steps)
        self.completed: dict[str, int] = {}
        self.finished: list[str] = []
        self._bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = self.phases[parent_phase][0] + 1 if parent_phase in self.phases else 0
            self.phases[phase_name] = (depth, num_steps)
            self.completed[phase_name] = 0
            log.log(logging.INFO if depth == 0 else logging.DEBUG, "%s: %s%s (%d steps)",
                    self.stage, "  " * depth, phase_name, num_steps)
            if self.show_bars and depth <= self.max_depth and num_steps > 1:
                self._bars[phase_name] = tqdm(total=num_steps, desc=f"{self.stage}: {phase_name}",
                                              position=depth, leave=depth == 0, unit="step")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            self.completed[phase_name] = step + 1
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
        return not (self.should_stop is not None and self.should_stop())

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            self.finished.append(phase_name)
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
