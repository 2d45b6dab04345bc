"""Stage warm-up (serving/warmup.py): every python stage model declares one warm-up request
whose inputs pass the stage's own boundary checks and run on the real stage, so Triton
marks the model ready only after a successful first execution (a failing warm-up fails
the load). The served side is exercised by every server test: each server start runs it."""

import numpy as np
import pytest
import torch

from cinema_trt.models.factory import load_models, torch_runners
from cinema_trt.models.stages import STAGE_NAMES, stage
from cinema_trt.serving.repo import build_repository
from cinema_trt.serving.stage_checks import check_declared, check_values, symbol_limits
from cinema_trt.serving.triton_config import parse_config
from cinema_trt.serving.warmup import WARMUP_FOLDER


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    pytest.importorskip("tritonclient.grpc", reason="configs need the serve extra")
    return build_repository(None, tmp_path_factory.mktemp("warmup") / "models", tiny_weights)


def _warmup_inputs(repo, stage: str, spec) -> dict[str, torch.Tensor]:
    """The tensors Triton builds from the config's warm-up entry."""
    config = parse_config((repo / stage / "config.pbtxt").read_text())
    (warmup,) = config.model_warmup
    assert set(warmup.inputs) == set(spec.input_names)
    inputs = {}
    for tensor in spec.inputs:
        entry = warmup.inputs[tensor.name]
        dtype = torch.empty((), dtype=tensor.dtype).numpy().dtype
        if entry.zero_data:
            array = np.zeros(list(entry.dims), dtype)
        else:
            raw = (repo / stage / WARMUP_FOLDER / entry.input_data_file).read_bytes()
            array = np.frombuffer(raw, dtype).reshape(list(entry.dims))
        inputs[tensor.name] = torch.from_numpy(array.copy())
    return inputs


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_each_stage_warms_up_with_inputs_its_checks_accept(repo, tiny_weights, tiny_config,
                                                           name):
    spec = stage(name).spec(tiny_config)
    inputs = _warmup_inputs(repo, name, spec)
    check_declared(spec, {n: list(t.shape) for n, t in inputs.items()},
                   symbol_limits(tiny_config))
    check_values(spec, inputs, tiny_config.mllm.vocab_size)
    outputs = torch_runners(load_models(tiny_weights))[name].run(inputs)
    assert set(outputs) == set(spec.output_names)
    assert all(torch.isfinite(t).all() for t in outputs.values())


def test_the_orchestrator_has_no_warmup(repo):
    # decoupled BLS model: a warm-up would need every stage loaded first
    assert not parse_config((repo / "cinema" / "config.pbtxt").read_text()).model_warmup
