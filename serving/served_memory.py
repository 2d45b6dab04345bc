"""The device memory of a deployment as Triton serves it, per layout: pure arithmetic over
each engine's figures, so it is tested on small numbers. `cinema-trt memory-plan` feeds it
the TensorRT-RTX builder's figures at paper scale (benchmarks/memory_served.py);
`cinema-trt repo --memory-budget` feeds it the figures of the engines it serves.

What an engine holds on the GPU (`EngineFigures`):
- weights and persistent memory (the builder's figures; a weight-streamed engine holds only
  its budget of weights, TensorRT streams the rest from host memory per call),
- an activation region (the builder's figure; the runners of one process share one region,
  engines/trt_memory.py, so a process needs its largest engine's, not the sum),
- I/O buffers: `TensorRTRunner` allocates every input and output once at its largest shape,
- a chunked decoder's state: the causal convs' carried frames are inputs and outputs of the
  step graph (models/vae_chunks.py), so two copies are live while a step runs; a tiled
  decode also holds every other tile's state between its calls (models/vae_tiles.py
  `iter_tiles`), on the GPU where the runners run in the pipeline's process (SHARED) and
  in the orchestrator's host memory per-stage (BLS asks the stage models for host memory).

Layouts:
- `PER_STAGE` (`cinema-trt repo`'s default): one Triton model per stage, each instance its
  own process on the Python backend (which serves TensorRT-RTX plans), each with a CUDA
  context and its own activation region;
- `SHARED` (`cinema-trt repo --layout shared`, serving/layouts.py): the TensorRT stages of
  one GPU in the `cinema` model's process with one activation region (`tensorrt_runners`,
  as an in-process pipeline); `repo --memory-budget` takes it when per-stage does not fit.
Per process a CUDA context: an assumption (`Assumptions.cuda_context`), since no builder
reports it; on current drivers a context with cuBLAS/cuDNN-free TensorRT takes a few hundred
MiB, so 0.5 GiB, overridable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

GIB = 2**30
CARDS_GIB = (16, 24, 32, 48, 80)
PER_STAGE, SHARED = "per-stage", "shared"
LAYOUTS = (PER_STAGE, SHARED)
CUDA_CONTEXT_GIB = 0.5  # per process: an assumption (module doc)
# a streamed engine keeps at least this many blocks of weights resident: one computing while
# the next one arrives (an assumption: TensorRT reports its streaming scratch only on a GPU)
STREAM_BLOCKS = 2


@dataclass(frozen=True)
class EngineFigures:
    """One engine's device memory, in bytes (module doc)."""

    weights: int
    activation: int
    persistent: int = 0
    io: int = 0  # every input and output at its largest shape
    state: int = 0  # a chunked decoder's carried state, one copy (held twice)
    held: int = 0  # the other tiles' states the caller holds between calls (module doc)
    block_weights: int = 0  # one repeated block's weights: the streaming granularity

    def __post_init__(self):
        for name in ("weights", "activation", "persistent", "io", "state", "held",
                     "block_weights"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 bytes")


@dataclass(frozen=True)
class ServedPlan:
    """A deployment's engines: stage model -> graph -> figures. `streamed`: the graph whose
    weights stream (built with --weight-streaming), or None. `rank`: lower is preferred
    among plans that fit (the caller's policy: precision, exactness, speed)."""

    name: str
    stages: Mapping[str, Mapping[str, EngineFigures]]
    streamed: str | None = None
    rank: tuple[int, ...] = ()
    settings: Mapping[str, str] = field(default_factory=dict)  # what the plan chose

    def __post_init__(self):
        graphs = [g for stage in self.stages.values() for g in stage]
        if self.streamed is not None and self.streamed not in graphs:
            raise ValueError(f"{self.name}: streamed graph {self.streamed!r} is not among "
                             f"its graphs {graphs}")


@dataclass(frozen=True)
class Assumptions:
    cuda_context: int = int(CUDA_CONTEXT_GIB * GIB)  # per process
    instances: int = 1  # of each stage model (per-stage), or of the one process (shared)

    def __post_init__(self):
        if self.cuda_context < 0 or self.instances < 1:
            raise ValueError(f"cuda_context={self.cuda_context} must be >= 0 and "
                             f"instances={self.instances} >= 1")


@dataclass(frozen=True)
class Peak:
    """A plan's device memory in one layout. With a streamed graph, `peak` counts only its
    minimum resident weights (`min_resident`); `budget_on` says what a card leaves it."""

    plan: str
    layout: str
    peak: int
    parts: dict[str, int]  # weights, activations, I/O, chunk state, CUDA contexts
    processes: int
    streamed: str | None = None
    streamable: int = 0  # the streamed graph's weights
    min_resident: int = 0
    rank: tuple[int, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)


def _resident(plan: ServedPlan, graph: str, figures: EngineFigures) -> int:
    if graph != plan.streamed:
        return figures.weights
    return min_resident(figures)


def min_resident(figures: EngineFigures) -> int:
    """The least of a streamed engine's weights kept on the GPU (STREAM_BLOCKS blocks)."""
    return min(figures.weights, STREAM_BLOCKS * figures.block_weights)


def _process(plan: ServedPlan, graphs: Mapping[str, EngineFigures], in_pipeline: bool
             ) -> dict[str, int]:
    """One process holding `graphs`: their weights, buffers and state, one activation region;
    `in_pipeline`: the pipeline runs in it, holding the tiles' states on the GPU."""
    return {
        "weights": sum(_resident(plan, g, f) + f.persistent for g, f in graphs.items()),
        "activations": max((f.activation for f in graphs.values()), default=0),
        "I/O": sum(f.io for f in graphs.values()),
        "chunk state": sum(2 * f.state + (f.held if in_pipeline else 0)
                           for f in graphs.values()),
    }


def _add(total: dict[str, int], part: dict[str, int], times: int = 1) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + times * value


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {list(LAYOUTS)}")
    return layout


def served_peak(plan: ServedPlan, layout: str, assumptions: Assumptions = Assumptions()
                ) -> Peak:
    """The device memory of `plan` served in `layout` (module doc)."""
    if check_layout(layout) == PER_STAGE:
        processes = [graphs for graphs in plan.stages.values()]
    else:
        processes = [{g: f for graphs in plan.stages.values() for g, f in graphs.items()}]
    parts: dict[str, int] = {}
    for graphs in processes:
        _add(parts, _process(plan, graphs, layout == SHARED), assumptions.instances)
    count = len(processes) * assumptions.instances
    parts["CUDA contexts"] = count * assumptions.cuda_context
    streamed = next((f for graphs in plan.stages.values() for g, f in graphs.items()
                     if g == plan.streamed), None)
    return Peak(plan.name, layout, sum(parts.values()), parts, count, plan.streamed,
                streamable=streamed.weights if streamed else 0,
                min_resident=min_resident(streamed) if streamed else 0,
                rank=plan.rank, settings=dict(plan.settings))


def budget_on(peak: Peak, capacity: int) -> int | None:
    """None when `peak` does not fit `capacity` bytes; else the weight-streaming budget
    the card leaves the streamed engine (all the room the rest leaves, up to its weights),
    or 0 for a plan that streams nothing."""
    if peak.peak > capacity:
        return None
    if peak.streamed is None:
        return 0
    rest = peak.peak - peak.min_resident
    return min(peak.streamable, capacity - rest)


def streamed_bytes(peak: Peak, budget: int) -> int:
    """What one call of the streamed engine copies from host memory at `budget`."""
    return max(0, peak.streamable - budget) if peak.streamed else 0


def choose(peaks: Iterable[Peak], capacity: int) -> Peak | None:
    """The preferred (lowest rank, then smallest peak) plan that fits `capacity`."""
    fitting = [p for p in peaks if budget_on(p, capacity) is not None]
    return min(fitting, key=lambda p: (p.rank, p.peak), default=None)


def parse_size(text: str) -> int:
    """'24GiB', '1.5 GiB', '512MiB', '24G' (binary units) -> bytes."""
    units = {"gib": GIB, "g": GIB, "mib": 2**20, "m": 2**20}
    cleaned = text.strip().lower().replace(" ", "")
    for unit in sorted(units, key=len, reverse=True):
        if cleaned.endswith(unit):
            number = cleaned[: -len(unit)]
            try:
                value = float(number)
            except ValueError:
                break
            if value <= 0:
                break
            return int(value * units[unit])
    raise ValueError(f"size {text!r} must be a positive number with a unit, e.g. 24GiB, "
                     "1.5GiB or 512MiB")


def fits_table(peaks: Iterable[Peak], cards_gib: Iterable[int] = CARDS_GIB) -> list[str]:
    """A markdown table: each plan's peak and, per card, whether it fits (with the
    weight-streaming budget a streamed plan gets there)."""
    cards = list(cards_gib)
    lines = ["| plan | layout | peak (GiB) | " + " | ".join(f"{c} GiB" for c in cards) + " |",
             "|---|---|---:|" + "---|" * len(cards)]
    for p in peaks:
        cells = []
        for card in cards:
            budget = budget_on(p, card * GIB)
            if budget is None:
                cells.append("no")
            elif p.streamed and budget < p.streamable:
                cells.append(f"fits, streams {streamed_bytes(p, budget) / GIB:.1f}")
            else:
                cells.append("fits")
        lines.append(f"| {p.plan} | {p.layout} | {p.peak / GIB:.1f} | " + " | ".join(cells)
                     + " |")
    return lines
