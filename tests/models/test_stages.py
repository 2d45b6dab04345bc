"""The stage registry (models/stages.py) and its stage objects: every graph states a spec,
cases and symbols that fit each other, and names resolve the way the CLI promises. That no
other module names a stage is checked by tests/packaging/test_consistency.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cinema_trt.models.precision import Precision
from cinema_trt.models.stage import Request
from cinema_trt.models.stages import (
    FP8_GRAPHS,
    GRAPHS,
    MLLM,
    STAGES,
    aliases,
    graph,
    resolve_graphs,
    stage_of,
)

ROOT = Path(__file__).resolve().parents[2]


def _symbols(spec) -> set[str]:
    return {d for t in spec.inputs + spec.outputs for d in t.dims if isinstance(d, str)}


@pytest.mark.parametrize("g", GRAPHS, ids=lambda g: g.name)
def test_each_graph_names_its_spec_and_its_cases_fill_every_symbol(g, tiny_config):
    spec = g.spec(tiny_config)
    assert spec.name == g.name
    example, checks = g.cases(tiny_config)
    assert len(checks) >= 2 and all(c != example for c in checks)
    for case in (example, *checks):
        inputs = g.sample_inputs(tiny_config, case)
        assert list(inputs) == list(spec.input_names)


@pytest.mark.parametrize("s", STAGES, ids=lambda s: s.name)
def test_each_stage_and_graph_sizes_every_symbol_of_a_request(s, tiny_config):
    request = Request(batch=1, frames=5, height=64, width=64, refs=2, seq=40, images=2,
                      image_pixels=tiny_config.mllm.max_pixels, cfg=True)
    for g in {s, *s.graphs}:
        values = g.symbols(request, tiny_config)
        inputs = g.spec(tiny_config).inputs
        assert {d for t in inputs for d in t.dims if isinstance(d, str)} <= set(values), g


def test_the_cfg_pair_doubles_only_the_stage_called_per_step(tiny_config):
    request = Request(1, 5, 64, 64, 3, 40, 3, tiny_config.mllm.max_pixels, cfg=True)
    batches = {s.name: s.symbols(request, tiny_config)["batch"] for s in STAGES}
    assert {n for n, b in batches.items() if b == 2} == {s.name for s in STAGES if s.per_step}


def test_a_split_stage_stands_for_its_graphs_in_order():
    assert aliases() == {MLLM.name: tuple(g.name for g in MLLM.graphs)}
    per_step = next(s for s in STAGES if s.per_step).name
    assert resolve_graphs([per_step, MLLM.name, per_step]) == (
        *(g.name for g in MLLM.graphs), per_step)
    assert all(stage_of(g.name) is MLLM for g in MLLM.graphs)
    with pytest.raises(ValueError, match="unknown stage 'unet'"):
        resolve_graphs(["unet"])
    with pytest.raises(ValueError, match="unknown graph"):
        graph(MLLM.name)  # a split stage is no graph


def test_fp8_graphs_are_the_graphs_with_an_fp8_recipe():
    assert FP8_GRAPHS == tuple(g.name for g in GRAPHS if Precision.FP8 in g.recipes)
    assert FP8_GRAPHS  # the recipes exist


def test_the_registry_loads_without_torch():
    """The CLI builds its help from it at start-up: importing torch would cost seconds."""
    code = ("import sys, cinema_trt.models.stages; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)



@pytest.mark.parametrize("chunk,lframes", [(1, 1), (3, 3), (8, 5)])
def test_the_decoder_is_called_with_decode_chunk_latent_frames(tiny_config, chunk, lframes):
    """17 frames are 5 latent frames: every call of the decode takes `decode_chunk` of them
    (a short tail is padded), or all 5 when the chunk is longer than the video."""
    import dataclasses

    from cinema_trt.models.stages import VAE_DECODER

    config = dataclasses.replace(tiny_config, sampler=dataclasses.replace(
        tiny_config.sampler, decode_chunk=chunk))
    request = Request(1, 17, 32, 48, 1, 40, 1, tiny_config.mllm.max_pixels, cfg=True)
    symbols = VAE_DECODER.symbols(request, config)
    assert (symbols["lframes"], symbols["chunk_frames"]) == (lframes, 4 * lframes)
    shapes = VAE_DECODER.shapes(request, config)
    assert shapes["latents"] == (1, 16, lframes, 4, 6) and shapes["first"] == (1,)
