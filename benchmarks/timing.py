"""Time a call `runs` times after `warmup` untimed calls, on the clock that fits the device.

On a GPU, kernels run asynchronously: a host clock stopped when the Python call returns
would miss queued work. CUDA events recorded on the stream before and after the call, then
synchronized, time exactly the device work plus the launches in between. On the CPU,
`time.perf_counter_ns` is monotonic and has nanosecond resolution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

NS_PER_MS = 1e6


def clock_name(device: str) -> str:
    """What the record calls the clock used on `device`."""
    return "cuda_events" if device.startswith("cuda") else "perf_counter_ns"


def _time_host(fn: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / NS_PER_MS


def _time_cuda(fn: Callable[[], object]) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()  # nothing earlier may leak into this sample
    start.record()
    fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))  # ms


def time_call(fn: Callable[[], object], device: str = "cpu") -> float:
    """Milliseconds of one call of `fn` on the clock that fits `device`."""
    return _time_cuda(fn) if device.startswith("cuda") else _time_host(fn)


def _check(runs: int, warmup: int) -> None:
    if runs < 1:
        raise ValueError(f"runs={runs} must be >= 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")


def _warm(fn: Callable[[], object], warmup: int, device: str) -> None:
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], runs: int, warmup: int, device: str = "cpu",
            label: str = "") -> list[float]:
    """Milliseconds of each of `runs` timed calls of `fn`, after `warmup` untimed calls.

    Warm-up absorbs one-off costs (lazy allocation, ORT's first-run graph planning, CUDA
    graph capture, cuDNN autotuning) that a serving process pays once, not per request.
    """
    _check(runs, warmup)
    _warm(fn, warmup, device)
    samples = [time_call(fn, device) for _ in range(runs)]
    log.info("%s: %d runs, median %.2f ms", label or "call", runs, sorted(samples)[runs // 2])
    return samples


def measure_interleaved(fns: Sequence[Callable[[], object]], runs: int, warmup: int,
                        devices: Sequence[str]) -> list[list[float]]:
    """`measure` for several calls at once, timed round-robin: run r of every call before
    run r + 1 of any. On a shared machine, load that comes and goes then lands on all
    calls alike instead of on whichever happened to be measured at the time.
    `devices[i]` picks the clock of `fns[i]`."""
    _check(runs, warmup)
    if len(devices) != len(fns):
        raise ValueError(f"need one device per call: {len(fns)} calls, {len(devices)} devices")
    for fn, device in zip(fns, devices, strict=True):
        _warm(fn, warmup, device)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, (fn, device) in enumerate(zip(fns, devices, strict=True)):
            samples[i].append(time_call(fn, device))
    return samples
