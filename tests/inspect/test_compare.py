"""`cinema-trt compare`: polygraphy's Comparator judges one export against another by the
tolerances their manifests recorded (engines/accuracy.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cinema_trt.models.stages import FP8_GRAPHS as FP8_STAGES
from cinema_trt.models.stages import GRAPH_NAMES as ALL_STAGES

pytestmark = pytest.mark.slow  # needs the session exports (~2-3 min on 2 cores, once)


@pytest.fixture(scope="module", autouse=True)
def _polygraphy(require):
    require("polygraphy", 'pip install -e ".[test]"')


def _manifest(folder, stage):
    from cinema_trt.export.manifest import read_manifest

    return read_manifest(folder / stage)


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_fp16_export_matches_fp32_within_the_manifests_gates(stage, fp32_export, fp16_export):
    from cinema_trt.engines.accuracy import compare_stage

    result = compare_stage(fp32_export[0] / stage, fp16_export[0] / stage)
    gate32 = _manifest(fp32_export[0], stage).validation.tolerance
    gate16 = _manifest(fp16_export[0], stage).validation.tolerance
    # the triangle inequality through torch fp32, which both gates were measured against
    assert result.tolerance.metric == "rel_max"
    assert result.tolerance.limit == pytest.approx((gate32 + gate16) / (1 - gate32))
    assert result.cases == len(_manifest(fp32_export[0], stage).validation.cases)
    # fp16 rounding is visible (a comparison that ran nothing would measure 0) ...
    assert 0 < result.measured <= result.tolerance.limit
    assert result.passed


@pytest.mark.parametrize("stage", FP8_STAGES)
def test_fp8_export_matches_fp32_within_the_fp8_gate(stage, fp32_export, fp8_export):
    from cinema_trt.engines.accuracy import compare_stage

    result = compare_stage(fp32_export[0] / stage, fp8_export[0] / stage)
    fp8 = _manifest(fp8_export[0], stage).validation
    assert result.tolerance.metric == "cosine"
    # the fp32 export is within 1e-4 of torch, so its angle barely loosens the FP8 gate
    assert fp8.min_cosine - 1e-3 < result.tolerance.limit <= fp8.min_cosine
    assert result.tolerance.limit <= result.measured < 1.0
    assert result.passed


def test_the_same_inputs_as_the_export_validation(fp32_export):
    """The comparator's feeds are the validation's: ORT on them reproduces the manifest's
    recorded output scale exactly (any other inputs would give another max |torch|)."""
    from cinema_trt.engines.accuracy import validation_inputs
    from cinema_trt.export.ort import OrtRunner

    manifest = _manifest(fp32_export[0], "dit")
    runner = OrtRunner(fp32_export[0] / "dit")
    import torch

    scales = [float(runner.run({k: torch.from_numpy(v) for k, v in feed.items()})["velocity"]
                    .abs().max()) for feed in validation_inputs(manifest)]
    # validation.scale is max |torch fp32| (the worst case: the smallest); ORT fp32 is within
    # the 1e-4 gate of it
    assert min(scales) == pytest.approx(manifest.validation.error.scale, rel=2e-4)


def test_a_graph_that_left_its_validation_fails(fp32_export, fp16_export, tmp_path):
    """The bug it catches: a graph changed after export (a corrupted or swapped weight)
    while its manifest still vouches for it."""
    import onnx
    from onnx import numpy_helper

    from cinema_trt.engines.accuracy import compare_stage

    broken = tmp_path / "dit"
    shutil.copytree(fp16_export[0] / "dit", broken)
    model = onnx.load(str(broken / "model.onnx"))
    # the first block's adaLN modulation of the video stream, sign flipped
    weight = next(t for t in model.graph.initializer
                  if t.name.endswith("blocks.0.visual.modulation.weight"))
    values = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(-values, weight.name))
    onnx.save(model, str(broken / "model.onnx"))

    result = compare_stage(fp32_export[0] / "dit", broken)
    assert not result.passed
    assert result.measured > result.tolerance.limit


def test_cli_compares_every_common_stage_and_exits_by_the_verdict(fp32_export, fp8_export,
                                                                  capsys):
    from cinema_trt.cli.main import main

    assert main(["compare", str(fp32_export[0]), str(fp8_export[0]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["stage"] for r in rows) == sorted(FP8_STAGES)  # the stages both hold
    assert all(r["passed"] and r["metric"] == "cosine" for r in rows)


def test_cli_refuses_stages_one_folder_lacks(fp32_export, fp8_export, caplog):
    from cinema_trt.cli.main import main

    assert main(["compare", str(fp32_export[0]), str(fp8_export[0]),
                 "--stages", "vae_decoder"]) == 2
    assert "not in both folders" in caplog.text and "vae_decoder" in caplog.text


def test_cli_refuses_two_different_stages(fp32_export, caplog):
    from cinema_trt.cli.main import main

    assert main(["compare", str(fp32_export[0] / "dit"),
                 str(fp32_export[0] / "connector")]) == 2
    assert "compare one stage with itself" in caplog.text


def test_inputs_are_deterministic(fp32_export):
    from cinema_trt.engines.accuracy import validation_inputs

    manifest = _manifest(fp32_export[0], "mllm_vision")
    first, second = validation_inputs(manifest), validation_inputs(manifest)
    assert len(first) == 2
    for a, b in zip(first, second, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
