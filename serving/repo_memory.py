"""The repository's memory plan: `cinema-trt repo --memory-budget` and
`--weight-streaming-budget`, from the engines the repository serves.

A repository cannot change an engine: its precision, its profile and whether it can stream
its weights were fixed by `cinema-trt build`. What the repository sets is the weight-streaming
budget of an engine built with --weight-streaming (the `weight_streaming_budget` parameter
of its stage model, serving/stage_model.py). So `--memory-budget` prices the engines in
`--artifacts` as served (serving/served_memory.py: one process per stage model instance,
each with a CUDA context, its activation region, I/O buffers), from the builder's figures in
their manifests, and
- fits: writes the repository as it is;
- fits only with less of a streamable engine's weights resident: sets that budget;
- else refuses (`MemoryBudgetError`) with the deployment's table against the cards and
  what would change it: other engines (`cinema-trt build`), a streamable DiT.
The decoder stage is its chunked step graph: its carried state is among its inputs and
outputs, so the I/O buffers count it twice (fp32 today: the step graph's state I/O is not
yet in the engine's precision).
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
from cinema_trt.models.stages import DIT, STAGES

from .served_memory import (
    GIB,
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


def plan_memory(engines: Path, config: CinemaConfig, request: MemoryRequest) -> dict[str, int]:
    """{graph: weight-streaming budget} for the stage models' configs; {} when nothing
    streams. Raises MemoryBudgetError when the engines cannot fit (module doc)."""
    plan = deployment_plan(engines, config)
    explicit = request.weight_streaming_budget
    if explicit is not None:
        streamed = _need_streamable(plan, engines, explicit)
        if request.memory_budget is None:
            return {streamed: explicit}
    assert request.memory_budget is not None, "plan_memory needs a budget (request.asked)"
    peak = served_peak(plan, PER_STAGE, request.assumptions)
    fitted = budget_on(peak, request.memory_budget)
    rest = peak.peak - peak.min_resident
    if fitted is None or (explicit is not None
                          and rest + min(explicit, peak.streamable) > request.memory_budget):
        raise MemoryBudgetError(refusal(peak, request.memory_budget, engines))
    if explicit is not None:
        return {str(peak.streamed): explicit}
    if peak.streamed is None or fitted >= peak.streamable:
        log.info("the repository's engines need %.2f GiB per GPU as served (budget %.2f GiB)",
                 (rest + peak.streamable if peak.streamed else peak.peak) / GIB,
                 request.memory_budget / GIB)
        return {}
    log.info("%s keeps %.2f GiB of its %.2f GiB of weights resident to fit %.2f GiB",
             peak.streamed, fitted / GIB, peak.streamable / GIB, request.memory_budget / GIB)
    return {peak.streamed: fitted}


def refusal(peak: Peak, memory_budget: int, engines: Path) -> str:
    """Why the engines do not fit, with their table against the cards and the builds that
    would change it (a repository cannot change an engine)."""
    folder = engines / DIT.name
    dit = built(read_manifest(folder), folder)
    lines = [f"the repository's engines need {peak.peak / GIB:.2f} GiB per GPU as served "
             f"(one process per stage model, {peak.processes} processes: "
             + ", ".join(f"{k} {v / GIB:.2f}" for k, v in peak.parts.items())
             + f" GiB), over the memory budget of {memory_budget / GIB:.2f} GiB.", "",
             *fits_table([peak]), "",
             "A repository cannot change an engine. Engines that would fit are built, not "
             "configured:"]
    if peak.streamed is None:
        lines.append(f"- a {DIT.name} whose weights stream, so the repository sets its "
                     f"budget:\n    {dit.rebuild_command} --weight-streaming")
    else:
        lines.append(f"- ({peak.streamed} streams already: the table counts "
                     f"{peak.min_resident / GIB:.2f} GiB of its weights resident at least)")
    if dit.precision != "fp8":
        lines.append(f"- the {DIT.name} in FP8: cinema-trt export --fp8 --stages {DIT.name}, "
                     f"then cinema-trt build --precision fp8 --stages {DIT.name}")
    lines.append("- the MLLM's text weights in INT8/INT4: export/weight_only.py (no CLI flag "
                 "yet); a tiled VAE decoder: not served yet (issue 20)")
    return "\n".join(lines)
