"""The stage models' boundary checks (serving/stage_checks.py), in process.

The limits must accept every call the real pipeline makes (4 references, the longest
prompt, CFG's batch of 2, the unconditional pass without images) and refuse the hostile
shapes of issue 13 before any data is read; the value checks must name the input.
"""

import dataclasses

import numpy as np
import pytest
import torch

from cinema_trt.models.factory import torch_pipeline
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import MAX_PROMPT_CHARS, GenerationRequest
from cinema_trt.models.stages import CONNECTOR, MLLM, VAE_ENCODER, stage
from cinema_trt.serving.stage_checks import (
    InvalidInput,
    check_declared,
    check_values,
    limits_parameter,
    parse_limits,
    symbol_limits,
)


class Checked:
    """A runner that applies the stage boundary checks, then runs the real stage."""

    def __init__(self, runner, spec, limits, vocab_size):
        self.runner, self.spec, self.limits, self.vocab = runner, spec, limits, vocab_size
        self.name = runner.name
        self.calls = 0

    def run(self, inputs):
        check_declared(self.spec, {n: list(t.shape) for n, t in inputs.items()}, self.limits)
        check_values(self.spec, inputs, self.vocab)
        self.calls += 1
        return self.runner.run(inputs)


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config


@pytest.fixture(scope="module")
def limits(config):
    return symbol_limits(config)


def test_the_limits_accept_every_call_of_a_maximal_request(config, limits):
    pipeline = torch_pipeline(config, seed=0)
    pipeline.runners = {name: Checked(runner, stage(name).spec(config), limits,
                                      config.mllm.vocab_size)
                        for name, runner in pipeline.runners.items()}
    refs = tuple(load_image(p) for p in sample_references()[:4])
    # the longest prompt, of 4-byte characters: the most tokens a prompt can become
    prompt = "\U0001F600" * MAX_PROMPT_CHARS
    request = GenerationRequest.with_defaults(config, prompt, refs, frames=5, height=32,
                                              width=32, steps=1)
    video = pipeline.generate(request)
    assert video.shape == (5, 32, 32, 3)
    assert all(runner.calls for runner in pipeline.runners.values())


HIDDEN = 64  # the tiny preset's connector input width


@pytest.mark.parametrize("seq", [100_000_000, 2 ** 62, 0, 20_000])
def test_hostile_declared_shapes_are_refused_naming_the_limit(config, limits, seq):
    spec = CONNECTOR.spec(config)
    with pytest.raises(InvalidInput, match=rf"'hidden_states' declares shape \[1, {seq}, 64\]; "
                                           rf"dim 1 \(seq\) must be in 1\.\.{limits['seq']}"):
        check_declared(spec, {"hidden_states": [1, seq, HIDDEN], "attention_mask": [1, 5]},
                       limits)


@pytest.mark.parametrize("shapes,message", [
    ({"hidden_states": [1, 5, 63], "attention_mask": [1, 5]}, r"dim 2 must be 64"),
    ({"hidden_states": [1, 5], "attention_mask": [1, 5]}, r"it must have 3 dims"),
    ({"hidden_states": [1, 5, 64], "attention_mask": [1, 6]},
     r"dim 1 \(seq\) is 6, but 5 in input 'hidden_states'"),
    # batch: at most CFG's pair (the VAE encoder takes one reference a call)
    ({"hidden_states": [2, 5, 64], "attention_mask": [2, 5]}, None),
    ({"hidden_states": [3, 5, 64], "attention_mask": [3, 5]}, r"dim 0 \(batch\) must be"),
])
def test_ranks_fixed_dims_and_shared_symbols_are_checked(config, limits, shapes, message):
    spec = CONNECTOR.spec(config)
    if message is None:
        check_declared(spec, shapes, limits)
        return
    with pytest.raises(InvalidInput, match=message):
        check_declared(spec, shapes, limits)


def test_a_video_over_the_pixel_cap_is_refused(config, limits):
    spec = VAE_ENCODER.spec(config)
    with pytest.raises(InvalidInput, match=r"frames\*height\*width=257\*2048\*2048 exceeds"):
        check_declared(spec, {"video": [1, 3, 257, 2048, 2048]}, limits)


def _connector_inputs(hidden=None, mask=None):
    return {"hidden_states": torch.zeros(1, 5, HIDDEN) if hidden is None else hidden,
            "attention_mask": torch.ones(1, 5, dtype=torch.int64) if mask is None else mask}


@pytest.mark.parametrize("inputs,message", [
    (_connector_inputs(hidden=torch.full((1, 5, HIDDEN), float("nan"))),
     r"'hidden_states' holds 320 non-finite values"),
    # JSON's 1e39 becomes +Inf in FP32
    (_connector_inputs(hidden=torch.tensor(np.full((1, 5, HIDDEN), 1e39, np.float32))),
     r"'hidden_states' holds 320 non-finite values"),
    (_connector_inputs(mask=torch.tensor([[2, -1, 7, 0, 1]])),
     r"'attention_mask' must hold only 0 and 1, got \[-1, 2, 7\]"),
    (_connector_inputs(mask=torch.zeros(1, 5, dtype=torch.int64)),
     r"'attention_mask': row 0 is all zero"),
])
def test_values_without_meaning_are_refused_naming_the_input(config, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        check_values(CONNECTOR.spec(config), inputs)


def test_token_ids_outside_the_vocabulary_are_refused(config):
    spec = MLLM.spec(config)
    vocab = config.mllm.vocab_size
    ids = torch.tensor([[1, vocab, 3]])
    with pytest.raises(InvalidInput, match=rf"'input_ids' holds token ids in \[1, {vocab}\]"):
        check_values(spec, {"input_ids": ids}, vocab)


def test_the_pixel_cap_is_the_pipelines():
    # copied so a stage stub need not import models/pipeline.py (and transformers)
    from cinema_trt.models import pipeline
    from cinema_trt.serving import stage_checks

    assert stage_checks.MAX_VIDEO_PIXELS == pipeline.MAX_VIDEO_PIXELS


def test_the_limits_travel_in_the_config_parameter(config):
    assert parse_limits(limits_parameter(config)) == symbol_limits(config)


def test_the_limits_follow_the_preset(config):
    wider = dataclasses.replace(config, mllm=dataclasses.replace(config.mllm, max_refs=2),
                                dit=dataclasses.replace(config.dit, max_refs=2))
    assert symbol_limits(wider)["refs"] == 2
    assert symbol_limits(wider)["seq"] < symbol_limits(config)["seq"]
