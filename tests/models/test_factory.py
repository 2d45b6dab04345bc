"""Loading one stage from a weights folder (what a served stage model does) gives the very
module `load_models` gives for that stage, reads only that stage's files, and loads strictly."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from cinema_trt.models.factory import (
    CONFIG_FILE,
    STAGE_PARTS,
    load_models,
    load_stage_module,
    read_weights_config,
    stage_weight_entries,
    torch_runners,
)
from cinema_trt.models.specs import STAGES
from cinema_trt.models.weights import CheckpointError


@pytest.fixture(scope="module")
def loaded(tiny_weights):
    return load_models(tiny_weights)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name  # bit-identical: both read the same file


def _partial_folder(weights, stage: str, out):
    """cinema_config.json plus only the entries `stage` needs, as serving/repo.py lays out."""
    out.mkdir()
    shutil.copy(weights / CONFIG_FILE, out / CONFIG_FILE)
    for entry in stage_weight_entries(stage):
        source = weights / entry
        (shutil.copytree if source.is_dir() else shutil.copy)(source, out / entry)
    return out


def test_every_pipeline_stage_has_a_module():
    assert set(STAGE_PARTS) == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_loads_the_module_load_models_runs(tiny_weights, loaded, stage, tmp_path):
    folder = _partial_folder(tiny_weights, stage, tmp_path / stage)
    module = load_stage_module(folder, stage, read_weights_config(folder))
    expected = torch_runners(loaded)[stage].module
    assert type(module) is type(expected)
    _assert_same_state(module, expected)


def test_the_loaded_weights_are_the_saved_ones_not_a_fresh_init(tiny_weights, loaded):
    # a fresh AlignerNet under another seed differs; the loaded one equals load_models'
    torch.manual_seed(123)
    module = load_stage_module(tiny_weights, "connector", loaded.config)
    fresh = type(module)(loaded.config.aligner)
    assert any(not torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                      fresh.state_dict().values(), strict=True))


def test_the_vae_stages_are_the_halves_of_one_vae(tiny_weights, loaded):
    encoder = load_stage_module(tiny_weights, "vae_encoder", loaded.config)
    decoder = load_stage_module(tiny_weights, "vae_decoder", loaded.config)
    _assert_same_state(encoder, loaded.vae.encoder)
    _assert_same_state(decoder, loaded.vae.decoder)


def test_loading_is_strict(tiny_weights, loaded, tmp_path):
    # the DiT's tensors in the connector's file: every key is wrong, so the load must fail
    folder = _partial_folder(tiny_weights, "connector", tmp_path / "swapped")
    shutil.copy(tiny_weights / "dit.safetensors", folder / "connector.safetensors")
    with pytest.raises(CheckpointError, match="connector.safetensors"):
        load_stage_module(folder, "connector", loaded.config)


def test_a_missing_stage_file_names_the_path(tiny_weights, loaded, tmp_path):
    folder = _partial_folder(tiny_weights, "connector", tmp_path / "connector-only")
    with pytest.raises(FileNotFoundError, match="dit.safetensors"):
        load_stage_module(folder, "dit", loaded.config)


def test_an_unknown_stage_lists_the_stages(tiny_weights, loaded):
    with pytest.raises(ValueError, match=r"stage='mllm_text'.*'vae_decoder'"):
        load_stage_module(tiny_weights, "mllm_text", loaded.config)
    with pytest.raises(ValueError, match="stage='unet'"):
        stage_weight_entries("unet")
