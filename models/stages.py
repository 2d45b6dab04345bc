"""The stage registry: every pipeline stage, in pipeline order. Each stage is an object
that carries its behaviour (models/stage.py): its graphs, specs, shape symbols, check
cases, recipes, warm-up sizes, CUDA-graph choice and how split graphs compose back. Code
that needs a stage asks it; adding a stage is its own file (models/stage_<name>.py) and a
line here.

    stage        graphs                      FP8 recipe (export/fp8.py)   glue
    mllm         mllm_vision + mllm_text     mllm_text (+ weight-only)    mllm_text/ folder
    connector    connector                   connector
    vae_encoder  vae_encoder                 -
    dit          dit                         dit
    vae_decoder  vae_decoder                 -

Torch-free: the CLI reads it at start-up.
"""

from __future__ import annotations

from typing import Any

from .precision import Precision
from .stage import Graph, Stage
from .stage_connector import CONNECTOR
from .stage_dit import DIT
from .stage_mllm import MLLM
from .stage_vae import VAE_DECODER, VAE_ENCODER

STAGES: tuple[Stage, ...] = (MLLM, CONNECTOR, VAE_ENCODER, DIT, VAE_DECODER)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
GRAPHS: tuple[Graph, ...] = tuple(g for stage in STAGES for g in stage.graphs)
GRAPH_NAMES = tuple(g.name for g in GRAPHS)
FP8_GRAPHS = tuple(g.name for g in GRAPHS if Precision.FP8 in g.recipes)
WEIGHT_ONLY_GRAPHS = tuple(g.name for g in GRAPHS if g.weight_only)  # export --weight-only
_STAGES = {stage.name: stage for stage in STAGES}
_GRAPHS = {g.name: g for g in GRAPHS}
_OWNERS = {g.name: stage for stage in STAGES for g in stage.graphs}


def _named(kind: str, table: dict[str, Stage] | dict[str, Graph], name: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; the {kind}s are {list(table)}")
    return table[name]


def stage(name: str) -> Stage:
    """The pipeline stage `name`; ValueError naming the stages otherwise."""
    return _named("stage", _STAGES, name)


def graph(name: str) -> Graph:
    """The graph `name` (a stage exported as itself is its own graph)."""
    return _named("graph", _GRAPHS, name)


def lookup(name: str) -> Graph:
    """A graph, or a pipeline stage (whose own spec and symbols are its runner's contract)."""
    return _GRAPHS.get(name) or stage(name)


def stage_of(graph_name: str) -> Stage:
    """The stage a graph belongs to."""
    return _OWNERS[graph(graph_name).name]


def aliases() -> dict[str, tuple[str, ...]]:
    """Stage names that stand for several graphs ("mllm" is exported as its two halves)."""
    return {s.name: tuple(g.name for g in s.graphs) for s in STAGES if s.split}


def resolve_graphs(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Graph or stage names (a split stage stands for its graphs) -> graph names, without
    repeats, in pipeline order; all of them for none. ValueError for unknown names."""
    if not names:
        return GRAPH_NAMES
    wanted: set[str] = set()
    for name in names:
        if name not in _GRAPHS and name not in _STAGES:
            raise ValueError(f"unknown stage {name!r}; choose from "
                             f"{list(GRAPH_NAMES) + sorted(aliases())}")
        wanted.update(g.name for g in (_STAGES[name].graphs if name in _STAGES
                                       else (_GRAPHS[name],)))
    return tuple(g for g in GRAPH_NAMES if g in wanted)
