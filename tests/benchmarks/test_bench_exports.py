"""The benchmark's ONNX cache: a cached stage is reused only when its manifest matches the
weights, config, precision and files being benchmarked (on the exported tiny connector)."""

from __future__ import annotations

import pytest

from cinema_trt.benchmarks.exports import stale_stages
from cinema_trt.models.factory import build_models


@pytest.fixture(scope="module")
def models(tiny_config):
    return build_models(tiny_config, seed=0)  # the exporter's weights


def test_a_matching_export_is_reused(models, exported):
    assert stale_stages(models, exported, ("connector",), fp8=False) == {}


def test_other_weights_are_not_reused(tiny_config, exported):
    other = build_models(tiny_config, seed=1)
    assert stale_stages(other, exported, ("connector",), fp8=False) == {
        "connector": "other weights"}


def test_a_missing_stage_is_stale(models, exported):
    stale = stale_stages(models, exported, ("connector", "dit"), fp8=False)
    assert list(stale) == ["dit"] and "no usable manifest" in stale["dit"]


def test_stages_outside_the_fp8_set_are_expected_in_fp32(models, exported):
    # FP8_STAGES is the dit only: an fp8 run keeps the fp32 connector, so it matches
    assert stale_stages(models, exported, ("connector",), fp8=True) == {}


def test_an_export_in_another_dtype_is_not_reused(models, exported):
    """The fp32 export does not stand in for the fp16 one the fp16 variants need."""
    assert stale_stages(models, exported, ("connector",), fp8=False, dtype="fp16") == {
        "connector": "precision fp32"}


def test_changed_model_bytes_are_not_reused(models, exported, tmp_path):
    import shutil

    copy = tmp_path / "onnx"
    shutil.copytree(exported, copy)
    with open(copy / "connector" / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert stale_stages(models, copy, ("connector",), fp8=False) == {
        "connector": "model files changed since export"}
