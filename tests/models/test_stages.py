"""The stage registry (models/stages.py) is the one list of stages, graphs and FP8 recipes:
what the exporter, the specs and the pipeline use must be what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cinema_trt.models.stages import (
    FP8_GRAPHS,
    GRAPHS,
    MLLM_TEXT,
    PIPELINE_STAGES,
    STAGE_ALIASES,
    Stage,
    graphs_of,
)

ROOT = Path(__file__).resolve().parents[2]


def test_graphs_are_the_specs_the_exporter_writes(tiny_config):
    from cinema_trt.export.fp8 import RECIPES
    from cinema_trt.export.stages import export_specs
    from cinema_trt.models.specs import stage_specs

    assert tuple(stage_specs(tiny_config)) == PIPELINE_STAGES
    assert set(export_specs(tiny_config)) == set(GRAPHS)
    assert set(RECIPES) == set(FP8_GRAPHS)


def test_a_split_stage_stands_for_its_graphs_in_order():
    assert STAGE_ALIASES == {"mllm": ("mllm_vision", MLLM_TEXT)}
    assert graphs_of(("dit", "mllm")) == ("mllm_vision", MLLM_TEXT, "dit")


def test_a_split_stage_without_its_glue_graph_is_refused():
    with pytest.raises(ValueError, match="needs glue= one of"):
        Stage("mllm", ("a", "b"))


def test_the_registry_loads_without_torch():
    """The CLI builds its help from it at start-up: importing torch would cost seconds."""
    code = ("import sys, cinema_trt.models.stages; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_module_but_the_registry_and_the_split_names_the_text_graph():
    found = subprocess.run(["grep", "-rln", "--include=*.py", "mllm_text", "."], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()
    found = {p for p in found if not p.startswith(("./tests/", "./.venv/", "./build/"))}
    assert found == {"./models/stages.py", "./export/mllm_split.py"}
