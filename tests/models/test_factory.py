"""Loading one stage from a weights folder (what a served stage model does) gives the very
module `load_models` gives for that stage, reads only that stage's files, and loads strictly."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from cinema_trt.models.factory import CONFIG_FILE, load_models, read_weights_config, torch_runners
from cinema_trt.models.stages import CONNECTOR, DIT, STAGES, VAE_DECODER, VAE_ENCODER, stage
from cinema_trt.models.weights import CheckpointError


@pytest.fixture(scope="module")
def loaded(tiny_weights):
    return load_models(tiny_weights)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name  # bit-identical: both read the same file


def _partial_folder(weights, name: str, out):
    """cinema_config.json plus only the entry stage `name` needs, as serving/repo.py lays
    it out."""
    out.mkdir()
    shutil.copy(weights / CONFIG_FILE, out / CONFIG_FILE)
    source = weights / stage(name).weights_entry
    (shutil.copytree if source.is_dir() else shutil.copy)(source, out / source.name)
    return out


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_a_stage_loads_the_module_load_models_runs(tiny_weights, loaded, name, tmp_path):
    folder = _partial_folder(tiny_weights, name, tmp_path / name)
    module = stage(name).load(folder, read_weights_config(folder))
    expected = torch_runners(loaded)[name].module
    assert type(module) is type(expected)
    _assert_same_state(module, expected)


def test_the_loaded_weights_are_the_saved_ones_not_a_fresh_init(tiny_weights, loaded):
    # a fresh AlignerNet under another seed differs; the loaded one equals load_models'
    torch.manual_seed(123)
    module = CONNECTOR.load(tiny_weights, loaded.config)
    fresh = type(module)(loaded.config.aligner)
    assert any(not torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                      fresh.state_dict().values(), strict=True))


def test_the_vae_stages_are_the_halves_of_one_vae(tiny_weights, loaded):
    encoder = VAE_ENCODER.load(tiny_weights, loaded.config)
    decoder = VAE_DECODER.load(tiny_weights, loaded.config)  # the decoder's chunk step
    _assert_same_state(encoder, loaded.vae.encoder)
    _assert_same_state(decoder.decoder, loaded.vae.decoder)


def test_loading_is_strict(tiny_weights, loaded, tmp_path):
    # the DiT's tensors in the connector's file: every key is wrong, so the load must fail
    folder = _partial_folder(tiny_weights, CONNECTOR.name, tmp_path / "swapped")
    shutil.copy(tiny_weights / DIT.weights_entry, folder / CONNECTOR.weights_entry)
    with pytest.raises(CheckpointError, match=CONNECTOR.weights_entry):
        CONNECTOR.load(folder, loaded.config)


def test_a_missing_stage_file_names_the_path(tiny_weights, loaded, tmp_path):
    folder = _partial_folder(tiny_weights, CONNECTOR.name, tmp_path / "connector-only")
    with pytest.raises(FileNotFoundError, match=DIT.weights_entry):
        DIT.load(folder, loaded.config)


def test_an_unknown_stage_lists_the_stages():
    # a graph of a split stage is no pipeline stage
    with pytest.raises(ValueError, match=r"unknown stage 'mllm_text'.*'vae_decoder'"):
        stage("mllm_text")
    with pytest.raises(ValueError, match="unknown stage 'unet'"):
        stage("unet")
