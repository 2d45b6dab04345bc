"""The repository's memory plan: `cinema-trt repo --memory-budget` and
`--weight-streaming-budget`, from the engines the repository serves.

A repository cannot change an engine: its precision, its profile and whether it can stream
its weights were fixed by `cinema-trt build`. What the repository sets is the weight-streaming
budget of an engine built with --weight-streaming (the `weight_streaming_budget` parameter
of the model that loads it, serving/stage_model.py) and the layout. So `--memory-budget` prices
the engines in `--artifacts` as served in each layout (serving/served_memory.py: per-stage,
one process per stage model instance, each with a CUDA context, its activation region, I/O
buffers; shared, every stage in the `cinema` model's process with one activation region),
from the builder's figures in their manifests, and takes the first layout that fits,
per-stage then shared (or the one `--layout` names):
- fits: writes the repository in that layout;
- fits only with less of a streamable engine's weights resident: sets that budget;
- else refuses (`MemoryBudgetError`) with the table of both layouts against the cards and
  what would change it: other engines (`cinema-trt build`), a streamable DiT.
The decoder stage is its chunked step graph: its carried state is among its inputs and
outputs, so the I/O buffers count it twice, in the graph's compute dtype (the manifest's:
`Graph.exported_spec`). A decoder built for tiles (`cinema-trt build --decode-tile`)
is priced at one tile: its builder figures are its tile profile's, and its I/O follows the
repository's decoding (`repo --decode-tile`), which must match the engine's profile
(engines/shape_check.py `check_serves`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cinema_trt.engines.manifest import built, check_streaming_budget
from cinema_trt.export.manifest import MANIFEST_FILE, read_manifest
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import tensor_bytes
from cinema_trt.models.stage import Graph, Request
from cinema_trt.models.stages import DIT, STAGES, VAE_DECODER, WEIGHT_ONLY_GRAPHS

from .served_memory import (
    GIB,
    LAYOUTS,
    PER_STAGE,
    Assumptions,
    EngineFigures,
    Peak,
    ServedPlan,
    budget_on,
    fits_table,
    served_peak,
)

log = logging.getLogger(__name__)


class MemoryBudgetError(ValueError):
    """The repository's engines do not fit the memory budget in any way it can set."""


@dataclass(frozen=True)
class MemoryRequest:
    """What the repository is asked to fit (bytes), and the per-process assumption."""

    memory_budget: int | None = None  # per GPU
    weight_streaming_budget: int | None = None  # explicit, for every streamable engine
    assumptions: Assumptions = Assumptions()

    def __post_init__(self):
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ValueError(f"memory_budget={self.memory_budget} must be > 0 bytes")
        if self.weight_streaming_budget is not None and self.weight_streaming_budget < 0:
            raise ValueError(f"weight_streaming_budget={self.weight_streaming_budget} must "
                             "be >= 0 bytes")

    @property
    def asked(self) -> bool:
        return self.memory_budget is not None or self.weight_streaming_budget is not None


def _io_bytes(graph: Graph, config: CinemaConfig, profiles: dict, request: Request,
              compute: str) -> int:
    """Inputs at their profile's max (what TensorRTRunner allocates) and outputs at the
    sizes those inputs give; a symbol no input carries (the decoder's frames, height and
    width) takes its value at `request`, the default deployment's max (engines/shapes.py,
    what `cinema-trt build` builds for without --profile); in the types of a graph
    computing in `compute` (the decoder's state: `Graph.exported_spec`)."""
    spec = graph.exported_spec(config, compute)
    values = graph.symbols(request, config)
    for tensor in spec.inputs:
        if tensor.name in profiles:
            for dim, size in zip(tensor.dims, profiles[tensor.name]["max"], strict=True):
                if isinstance(dim, str):
                    values[dim] = size
    return tensor_bytes((*spec.inputs, *spec.outputs), values)


def _figures(folder: Path, graph: Graph, config: CinemaConfig, request: Request
             ) -> tuple[EngineFigures, bool]:
    """(the engine's figures, whether it was built to stream its weights)."""
    manifest = read_manifest(folder)
    build = built(manifest, folder)
    memory = build.report.get("memory", {})
    if "weights_bytes" not in memory or "activation_bytes" not in memory:
        raise MemoryBudgetError(f"{folder / MANIFEST_FILE} records no builder memory figures; "
                                f"rebuild it to plan its memory:\n  {build.rebuild_command}")
    depth = getattr(getattr(config, graph.depth[0]), graph.depth[1]) if graph.depth else 0
    weights = memory["weights_bytes"]
    figures = EngineFigures(weights, memory["activation_bytes"],
                            memory.get("device_persistent_bytes", 0),
                            io=_io_bytes(graph, config, build.profiles, request,
                                         manifest.compute_dtype),
                            # a block's share; the base's share makes it an overestimate
                            block_weights=weights // depth if depth else weights)
    return figures, bool(build.build_config.get("weight_streaming"))


def deployment_plan(engines: Path, config: CinemaConfig) -> ServedPlan:
    """The engines under `engines` (`<graph>/` build folders) as one served plan, the
    streamable engine (one at most) streamed."""
    from cinema_trt.engines.shapes import default_shapes, request_at

    request = request_at(default_shapes(config), config, "max")
    stages: dict[str, dict[str, EngineFigures]] = {}
    streamable = []
    for stage in STAGES:
        stages[stage.name] = {}
        for graph in stage.graphs:
            if not (engines / graph.name / MANIFEST_FILE).is_file():
                raise MemoryBudgetError(f"{engines / graph.name / MANIFEST_FILE} not found: "
                                        "the memory budget plans built engines (cinema-trt "
                                        "build)")
            figures, streams = _figures(engines / graph.name, graph, config, request)
            stages[stage.name][graph.name] = figures
            if streams:
                streamable.append(graph.name)
    if len(streamable) > 1:
        raise MemoryBudgetError(f"{streamable} were all built with --weight-streaming; the "
                                "plan streams one engine (the DiT): rebuild the others without")
    return ServedPlan("the repository's engines", stages,
                      streamed=streamable[0] if streamable else None)


def _need_streamable(plan: ServedPlan, engines: Path, budget: int) -> str:
    """The streamed graph; an engine built without streaming is refused with its rebuild."""
    if plan.streamed is None:
        folder = engines / DIT.name
        check_streaming_budget(built(read_manifest(folder), folder), DIT.name, budget)
    assert plan.streamed is not None  # check_streaming_budget raised otherwise
    return plan.streamed


@dataclass(frozen=True)
class MemoryChoice:
    """What the repository writes: its layout and {graph: weight-streaming budget}."""

    layout: str
    budgets: dict[str, int]


def _fit(peak: Peak, request: MemoryRequest) -> dict[str, int] | None:
    """The streaming budgets that fit `peak` into the memory budget ({} when nothing
    streams or everything stays resident); None when it does not fit."""
    assert request.memory_budget is not None, "_fit needs a budget"
    explicit = request.weight_streaming_budget
    fitted = budget_on(peak, request.memory_budget)
    rest = peak.peak - peak.min_resident
    if fitted is None or (explicit is not None
                          and rest + min(explicit, peak.streamable) > request.memory_budget):
        return None
    if explicit is not None:
        return {str(peak.streamed): explicit}
    if peak.streamed is None or fitted >= peak.streamable:
        log.info("the repository's engines need %.2f GiB per GPU served %s (budget %.2f GiB)",
                 (rest + peak.streamable if peak.streamed else peak.peak) / GIB, peak.layout,
                 request.memory_budget / GIB)
        return {}
    log.info("%s keeps %.2f GiB of its %.2f GiB of weights resident to fit %.2f GiB (%s)",
             peak.streamed, fitted / GIB, peak.streamable / GIB, request.memory_budget / GIB,
             peak.layout)
    return {peak.streamed: fitted}


def plan_memory(engines: Path, config: CinemaConfig, request: MemoryRequest,
                layouts: tuple[str, ...] = LAYOUTS) -> MemoryChoice:
    """The first of `layouts` (default: per-stage, then shared) whose engines fit, with the
    streaming budgets it sets ({} when nothing streams). Raises MemoryBudgetError with both
    layouts' table when none of `layouts` fits (module doc)."""
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown or not layouts:
        raise ValueError(f"layouts={layouts} must be some of {list(LAYOUTS)}")
    plan = deployment_plan(engines, config)
    explicit = request.weight_streaming_budget
    if explicit is not None:
        streamed = _need_streamable(plan, engines, explicit)
        if request.memory_budget is None:
            return MemoryChoice(layouts[0], {streamed: explicit})
    assert request.memory_budget is not None, "plan_memory needs a budget (request.asked)"
    peaks = [served_peak(plan, layout, request.assumptions) for layout in LAYOUTS]
    for layout in layouts:
        budgets = _fit(next(p for p in peaks if p.layout == layout), request)
        if budgets is not None:
            return MemoryChoice(layout, budgets)
    raise MemoryBudgetError(refusal(peaks, request.memory_budget, engines, layouts))


def _describe(peak: Peak) -> str:
    how = ("one process per stage model" if peak.layout == PER_STAGE
           else "every stage in the cinema model's process, one activation region")
    count = f"{peak.processes} process" + ("es" if peak.processes != 1 else "")
    return (f"- {peak.layout} ({how}, {count}): {peak.peak / GIB:.2f} GiB ("
            + ", ".join(f"{k} {v / GIB:.2f}" for k, v in peak.parts.items()) + " GiB)")


def refusal(peaks: list[Peak], memory_budget: int, engines: Path,
            layouts: tuple[str, ...] = LAYOUTS) -> str:
    """Why the engines do not fit, with their table in both layouts against the cards and
    the builds that would change it (a repository cannot change an engine)."""
    folder = engines / DIT.name
    dit = built(read_manifest(folder), folder)
    lines = [f"the repository's engines need more than the memory budget of "
             f"{memory_budget / GIB:.2f} GiB per GPU as served:", *map(_describe, peaks)]
    others = [p for p in peaks if p.layout not in layouts
              and budget_on(p, memory_budget) is not None]
    if others:
        lines.append(f"--layout {', '.join(layouts)} was asked; "
                     + " or ".join(f"--layout {p.layout}" for p in others)
                     + " would fit (or leave --layout out to choose the one that fits)")
    lines += ["", *fits_table(peaks), "",
              "A repository cannot change an engine. Engines that would fit are built, not "
              "configured:"]
    streamed = peaks[0].streamed
    if streamed is None:
        lines.append(f"- a {DIT.name} whose weights stream, so the repository sets its "
                     f"budget:\n    {dit.rebuild_command} --weight-streaming")
    else:
        lines.append(f"- ({streamed} streams already: the table counts "
                     f"{peaks[0].min_resident / GIB:.2f} GiB of its weights resident at least)")
    if dit.precision != "fp8":
        lines.append(f"- the {DIT.name} in FP8: cinema-trt export --fp8 --stages {DIT.name}, "
                     f"then cinema-trt build --precision fp8 --stages {DIT.name}")
    lines.extend(_weight_only_lines(engines))
    lines.append(f"- a {VAE_DECODER.name} built for spatial tiles (its activation is one "
                 f"tile's; approximate: models/vae_tiles.py): cinema-trt build --stages "
                 f"{VAE_DECODER.name} --decode-tile 32, then cinema-trt repo --decode-tile 32")
    return "\n".join(lines)


def _weight_only_lines(engines: Path) -> list[str]:
    """The weight-only exports that would shrink the engines (`export --weight-only`), for
    each graph with a recipe whose engine's weights are not integer yet."""
    lines = []
    for name in WEIGHT_ONLY_GRAPHS:
        folder = engines / name
        manifest = read_manifest(folder)
        if manifest.weight_format is not None:
            lines.append(f"- ({name} has {manifest.weight_format.name} weights already)")
            continue
        build = built(manifest, folder)
        lines.append(f"- {name} with INT4 weights (a quarter of fp16's bytes): cinema-trt "
                     f"export --dtype fp16 --weight-only int4 --stages {name}, then "
                     f"cinema-trt build --precision fp16 --runtime {build.runtime} --stages "
                     f"{name}")
    return lines
