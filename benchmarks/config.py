"""`BenchConfig`: every setting of one latency benchmark run, checked when built."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cinema_trt.models.backends import RUNTIMES
from cinema_trt.models.precision import Precision
from cinema_trt.models.presets import CinemaConfig

BENCH_PRESET = "small"  # without --preset and --weights
PRECISIONS = tuple(p.value for p in Precision)
RESULTS_DIR = Path(__file__).resolve().parent / "results"  # benchmarks/results/ of a checkout
DEFAULT_PROMPT = "A red circle and a blue square dance around each other on a wooden table."


def default_cache_dir() -> Path:
    """Where ONNX exports and engines for benchmarks are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cinema-trt" / "bench"


def default_device() -> str:
    import torch  # lazy: the CLI imports this module to build its parser

    return "cuda" if torch.cuda.is_available() else "cpu"


def _checked_choices(kind: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> tuple:
    if not values:
        raise ValueError(f"{kind} must name at least one of {list(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; choose from {list(allowed)}")
    return tuple(dict.fromkeys(values))  # drop repeats, keep the order given


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. The request is the config's sampler defaults (frames, size, steps,
    guidance) with `prompt`, the first `refs` bundled sample images and `seed`."""

    preset: str | None = None  # None: the weights folder's own config, else BENCH_PRESET
    weights: Path | None = None  # a save_models folder; None: the preset's seeded weights
    runtimes: tuple[str, ...] = RUNTIMES
    precisions: tuple[str, ...] = PRECISIONS
    runs: int = 10
    warmup: int = 2
    served: bool = False
    device: str = ""  # "" picks cuda when torch sees a GPU, else cpu
    cache_dir: Path | None = None  # None: default_cache_dir()
    prompt: str = DEFAULT_PROMPT
    refs: int = 2
    seed: int = 0
    # intra-op threads of torch, ONNX Runtime and the served stage models; 0 keeps each
    # library's default (one per core). On a shared machine, fewer threads than cores
    # avoids OpenMP barriers waiting on a descheduled thread (see benchmarks/README.md)
    threads: int = 0
    # time the variants round-robin (all loaded at once) instead of one after another:
    # fairer on a busy machine, but holds every variant's weights in memory together
    interleave: bool = False

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "runtimes", _checked_choices("runtime", tuple(self.runtimes), RUNTIMES))
        set_(self, "precisions",
             _checked_choices("precision", tuple(self.precisions), PRECISIONS))
        if self.runs < 1:
            raise ValueError(f"runs={self.runs} must be >= 1 (timed runs per measurement)")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if self.threads < 0:
            raise ValueError(f"threads={self.threads} must be >= 0 (0: library default)")
        if self.weights is None:
            set_(self, "preset", self.preset or BENCH_PRESET)
        config = self.model_config()  # ValueError naming the presets or the differing field
        max_refs = min(config.mllm.max_refs, config.dit.max_refs)
        if not 1 <= self.refs <= max_refs:
            raise ValueError(f"refs={self.refs} must be in 1..{max_refs} for config "
                             f"{config.name!r}")
        device = self.device or default_device()
        if device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"device={device!r} must be 'cpu' or 'cuda[:N]'")
        if device.startswith("cuda") and default_device() != "cuda":
            raise ValueError(f"device={device!r} but torch sees no CUDA GPU; use --device cpu")
        set_(self, "device", device)
        set_(self, "cache_dir", Path(self.cache_dir or default_cache_dir()))

    def model_config(self) -> CinemaConfig:
        """The weights folder's config (a preset given too must agree), else the preset's."""
        from cinema_trt.models.factory import command_config

        return command_config(self.preset, self.weights)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))  # paths: str, tuples: lists
