"""The exporter's parity checks exercise every input, by construction.

A graph that ignores one of its inputs (drops the padding mask, shares one CFG branch's
text, sees only the first reference, attends across images) must fail the export gate.
The check inputs of the stage objects (models/stage_*.py) are built so that it does:
masks padded on both sides, DiT batches of distinct rows with K = 3 distinct references,
several images per vision batch, M-RoPE positions with an image span. Each "blind"
variant below is what such a graph would compute: the stage's inputs with one of them
replaced.

Fast tier: on the PyTorch modules, every blind variant moves the output on the check
cases by at least 10x the fp32 gate. Slow tier: on the real exported graphs, ONNX Runtime
fed each blind variant is rejected by the exporter's own gate (export/check.py).

Measured on tiny (worst check case, max |change| / output scale; fp32 gate 1e-4): dit
CFG branches sharing text 3.3e-2, first reference only 5.2e-2, other text 6.1e-2, other
references 3.6e-2; connector mask ignored 1.9e-1; mllm_text mask ignored 2.3e-2 (thanks to
the masked span before valid tokens: right padding alone moves a causal LM's valid tokens
not at all, 3e-3 over all positions); mllm_vision one attention window over three images
4.3e-3; vae_decoder (worst output of video and next states) first flag forced either way
>= 1.1, each of its 14 states zeroed in the later chunk 0.53-1.1; every "other sample"
>= 0.2. Not caught, and so not listed: RoPE on the tiny MLLM's
random weights (its attention is near uniform): text-only M-RoPE positions move mllm_text
by 2e-5, identity vision rotary tables move mllm_vision by 8e-5, both under the fp32 gate.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch

from cinema_trt.export import check
from cinema_trt.export.check import FP32_TOLERANCE, ExportError, validate
from cinema_trt.export.compare import error_stats
from cinema_trt.export.manifest import read_manifest
from cinema_trt.export.validation import CHECK_SEED
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import GRAPH_NAMES, GRAPHS, VAE_DECODER, graph

Inputs = dict[str, torch.Tensor]


def _other(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return other  # the same input of another sample: the graph ignores this one


def _zeros(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def _ones(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


# stage -> {blind variant: (the input it replaces, (input, another sample's) -> replacement)}
BLIND: dict[str, dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]]
BLIND = {
    "mllm_vision": {
        "other pixels": ("pixel_values", _other),
        "one attention window across images": ("segment_ids", _zeros),
    },
    "mllm_text": {
        "other embeddings": ("inputs_embeds", _other),
        "mask ignored": ("attention_mask", _ones),
    },
    "connector": {
        "other hidden states": ("hidden_states", _other),
        "mask ignored": ("attention_mask", _ones),
    },
    "vae_encoder": {"other video": ("video", _other)},
    "dit": {
        "other latents": ("latents", _other),
        "other timestep": ("timestep", _other),
        "other text": ("text_states", _other),
        "CFG branches share the first row's text": (
            "text_states", lambda x, _: x[:1].expand_as(x).clone()),
        "other references": ("ref_latents", _other),
        "only the first reference": ("ref_latents", lambda x, _: x[:, :1].expand_as(x).clone()),
    },
    "vae_decoder": {
        "other latents": ("latents", _other),
        "every chunk taken for the first": ("first", _ones),
        "no chunk taken for the first": ("first", _zeros),
        # a later chunk's conv history lost: one variant per state (check case 1 is a later
        # chunk with random states)
        **{f"{name} dropped": (name, _zeros)
           for name in VAE_DECODER.spec(get_preset("tiny")).input_names[2:]},
    },
}
CASES = [(stage, variant) for stage in GRAPH_NAMES for variant in BLIND[stage]]


def blinded(stage: str, variant: str, inputs: Inputs, other: Inputs) -> Inputs:
    """What a graph blind in `variant`'s way computes on: one input replaced."""
    name, replace = BLIND[stage][variant]
    return {**inputs, name: replace(inputs[name], other[name])}


def _check_inputs(models, stage: str, case: int, case_dims) -> tuple[Inputs, Inputs]:
    """The exporter's inputs for check `case` (its seeds: CHECK_SEED + case) and another
    sample of the same shapes."""
    return (graph(stage).sample_inputs(models.config, case_dims, seed=CHECK_SEED + case),
            graph(stage).sample_inputs(models.config, case_dims, seed=200 + case))


def test_every_input_but_the_rope_tables_has_a_blind_variant(tiny_config):
    assert set(BLIND) == set(GRAPH_NAMES)
    for stage, spec in ((g.name, g.spec(tiny_config)) for g in GRAPHS):
        covered = {name for name, _ in BLIND[stage].values()}
        # RoPE does not reach the tiny MLLM's output past the gate (module docstring)
        rope = {"rotary_cos", "rotary_sin", "position_ids"}
        assert covered == set(spec.input_names) - rope, stage


@pytest.mark.parametrize("stage, variant", CASES)
def test_a_blind_graph_would_miss_the_reference_by_far_more_than_the_gate(stage, variant,
                                                                         tiny_models):
    module = graph(stage).module(tiny_models).eval()
    changes = []
    for i, dims in enumerate(graph(stage).cases(tiny_models.config)[1]):
        inputs, other = _check_inputs(tiny_models, stage, i, dims)
        with torch.inference_mode():
            reference = module(**inputs)
            blind = module(**blinded(stage, variant, inputs, other))
        changes.append(max(error_stats(b, r).rel_max for b, r in
                           zip(_outputs(blind), _outputs(reference), strict=True)))
    assert max(changes) >= 10 * FP32_TOLERANCE, changes


def _outputs(value) -> tuple[torch.Tensor, ...]:
    return (value,) if isinstance(value, torch.Tensor) else tuple(value)


@contextmanager
def _blind_graph(monkeypatch, stage, variant, other_for):
    """The exporter's graph runner, fed what a graph ignoring an input would compute on."""
    real = check._graph_runner
    seen = []

    @contextmanager
    def runner(stage_dir, manifest):
        with real(stage_dir, manifest) as run:
            def blind_run(inputs):
                seen.append(inputs)
                return run(blinded(stage, variant, inputs, other_for(len(seen) - 1)))
            yield blind_run

    monkeypatch.setattr(check, "_graph_runner", runner)
    yield seen


@pytest.mark.slow  # the session's full fp32 export
@pytest.mark.parametrize("stage", GRAPH_NAMES)
def test_the_export_gate_rejects_every_blind_variant_on_onnx_runtime(stage, fp32_export,
                                                                    tiny_models, monkeypatch):
    out, _ = fp32_export
    g = graph(stage)
    module, checks = g.module(tiny_models).eval(), g.cases(tiny_models.config)[1]
    manifest = read_manifest(out / stage)

    def gate():
        return validate(g, tiny_models, out / stage, manifest, (module, module), checks, None)

    gate()  # the unchanged graph passes the same call: what fails below is the blindness

    def other_for(case):
        return _check_inputs(tiny_models, stage, case, checks[case])[1]

    for variant in BLIND[stage]:
        with _blind_graph(monkeypatch, stage, variant, other_for), \
                pytest.raises(ExportError, match="the graph is wrong"):
            gate()
        monkeypatch.undo()
