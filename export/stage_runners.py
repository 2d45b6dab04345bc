"""Runners by pipeline stage from runners by graph: what ONNX Runtime, TensorRT, the served
stage models and the benchmarks open, each asking the stage how its graphs compose."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from cinema_trt.models.runner import Runner
from cinema_trt.models.stages import STAGES

from .manifest import check_sidecars


def stage_runners(found: Mapping[str, Path], load: Callable[[str], Runner],
                  glue: str | os.PathLike | None = None) -> dict[str, Runner]:
    """{stage: runner} for every stage whose graphs are all in `found` (graph -> its
    folder; `load(graph)` opens one, and only graphs of complete stages are opened).

    A stage's glue files (a split stage's, models/stage.py `Stage.glue`) are read from the
    export folder of its glue graph: `<glue>/<graph>` when `glue` (an export folder) is
    given, else the graph's own folder in `found` (an export, or an ORT build, which keeps
    them). They must hash as that folder's manifest records.
    """
    runners: dict[str, Runner] = {}
    for stage in STAGES:
        names = [g.name for g in stage.graphs]
        if not set(names) <= set(found):
            continue
        folder = None
        if stage.glue:
            folder = Path(glue) / stage.glue if glue is not None else found[stage.glue]
            check_sidecars(folder)
        runners[stage.name] = stage.compose({n: load(n) for n in names}, folder)
    return runners
