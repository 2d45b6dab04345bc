"""The TensorRT backends as data: typing rules, targets against precisions, the refusals a
TensorRT-RTX engine meets on load, and the plugin check. No builder needed."""

from __future__ import annotations

import dataclasses

import pytest

from cinema_trt.engines.artifacts import check_backend_graph
from cinema_trt.engines.config import BuildConfig, OnnxGraphInfo
from cinema_trt.engines.exported import ExportedStage
from cinema_trt.engines.manifest import (
    EngineMismatchError,
    RuntimeInfo,
    rebuild_command,
    validate_manifest,
)
from cinema_trt.export.manifest import BuildRecord
from cinema_trt.models.backends import (
    BACKENDS,
    ORT,
    TENSORRT,
    TENSORRT_RTX,
    parse_targets,
    resolve_targets,
    sm_name,
)
from cinema_trt.models.presets import get_preset

RTX_VERSION = "1.7.1.116"
RTX_COMMAND = rebuild_command("onnx16", "eng", BuildConfig(precision="fp16",
                                                           targets=("sm89", "sm120")),
                              ("dit",), runtime="tensorrt-rtx")


def test_tensorrt_rtx_is_always_strongly_typed():
    # TensorRT-RTX 1.7 is not "TensorRT < 11": it never had BuilderFlag.FP16
    assert not TENSORRT_RTX.weak_typing(RTX_VERSION)
    assert TENSORRT.weak_typing("10.13.3.9")
    assert not TENSORRT.weak_typing("11.0.0")


def test_backends_describe_their_caches_plugins_and_serving():
    assert (TENSORRT.timing_cache, TENSORRT.runtime_cache, TENSORRT.plugins) == (True, False, True)
    assert (TENSORRT_RTX.timing_cache, TENSORRT_RTX.runtime_cache, TENSORRT_RTX.plugins) == \
        (False, True, False)
    assert TENSORRT.triton_backend == "tensorrt" and TENSORRT_RTX.triton_backend == "python"
    assert TENSORRT_RTX.builds_without_gpu and not TENSORRT.builds_without_gpu
    assert ORT.builds_without_gpu and not ORT.plans and ORT.triton_backend == "onnxruntime"
    assert set(BACKENDS) == {"tensorrt", "tensorrt-rtx", "ort"}  # one name each, everywhere


def test_default_targets_are_every_one_the_precision_allows():
    assert resolve_targets(TENSORRT_RTX, "fp16", ()) == TENSORRT_RTX.targets
    assert resolve_targets(TENSORRT_RTX, "bf16", ()) == ("sm80", "sm86", "sm89", "sm120",
                                                         "sm121")
    assert resolve_targets(TENSORRT_RTX, "fp8", ()) == ("sm89", "sm120", "sm121")
    assert resolve_targets(TENSORRT_RTX, "fp8", ("sm89", "sm120")) == ("sm89", "sm120")


@pytest.mark.parametrize("precision, targets, message", [
    ("fp8", ("sm80",), r"precision=fp8 needs sm89 or newer, so it cannot target sm80; use "
                       r"--targets sm89,sm120,sm121"),
    ("bf16", ("sm75", "sm86"), r"needs sm80 or newer, so it cannot target sm75"),
    ("fp16", ("sm90",), r"compiles for sm75,sm80,sm86,sm89,sm120,sm121 only \(no sm90: "
                        r"H100/H200 use --runtime tensorrt\)"),
])
def test_targets_the_precision_cannot_use_are_refused_naming_those_that_work(precision, targets,
                                                                             message):
    with pytest.raises(ValueError, match=message):
        resolve_targets(TENSORRT_RTX, precision, targets)


def test_tensorrt_targets_the_gpu_it_builds_on():
    assert resolve_targets(TENSORRT, "fp8", (), build_gpu="sm90") == ("sm90",)
    with pytest.raises(ValueError, match="builds for the GPU it runs on"):
        resolve_targets(TENSORRT, "fp16", ("sm89",), build_gpu="sm90")
    with pytest.raises(ValueError, match="needs sm89 or newer, and this GPU is sm80"):
        resolve_targets(TENSORRT, "fp8", (), build_gpu="sm80")


@pytest.mark.parametrize("text, expected", [("sm89,sm120", ("sm89", "sm120")),
                                            ("8.9, 12.0", ("sm89", "sm120")),
                                            ("SM89,89", ("sm89",)), ("", ())])
def test_targets_parse_from_the_command_line(text, expected):
    assert parse_targets(text) == expected


def test_bad_target_spelling_is_refused():
    with pytest.raises(ValueError, match="'ada' is not a compute capability"):
        parse_targets("sm89,ada")
    assert sm_name("12.0") == "sm120"


@pytest.fixture
def rtx_manifest(stage_manifest, tmp_path):
    build = BuildRecord(
        runtime="tensorrt-rtx", runtime_version=RTX_VERSION, precision="fp16", build_config={},
        profiles={}, onnx_path="onnx16/dit/model.onnx", plan_file="model.plan",
        plan_sha256="b" * 64, cache_key="k" * 64, rebuild_command=RTX_COMMAND,
        targets=["sm89", "sm120"])
    export = stage_manifest(tmp_path / "dit", get_preset("tiny"), precision="fp16",
                            compute_dtype="float16")
    return dataclasses.replace(export, build=build)


def test_rtx_engine_loads_on_a_gpu_among_its_targets(rtx_manifest):
    validate_manifest(rtx_manifest, RuntimeInfo("tensorrt-rtx", RTX_VERSION,
                                                "NVIDIA GeForce RTX 4090", "8.9"))
    validate_manifest(rtx_manifest, RuntimeInfo("tensorrt-rtx", RTX_VERSION,
                                                "NVIDIA RTX PRO 6000", "12.0"))


def test_rtx_engine_on_a_gpu_outside_its_targets_is_refused_with_the_rebuild_command(
        rtx_manifest):
    with pytest.raises(EngineMismatchError) as error:
        validate_manifest(rtx_manifest, RuntimeInfo("tensorrt-rtx", RTX_VERSION,
                                                    "NVIDIA RTX A6000", "8.6"))
    message = str(error.value)
    assert "sm89, sm120" in message and "NVIDIA RTX A6000, is sm86" in message
    assert "--runtime tensorrt-rtx --targets sm89,sm120" in message
    assert "with sm86 added to --targets" in message


def test_rtx_engine_in_another_backend_or_version_is_refused(rtx_manifest):
    with pytest.raises(EngineMismatchError, match="built for tensorrt-rtx, not tensorrt"):
        validate_manifest(rtx_manifest, RuntimeInfo("tensorrt", "10.13.0", "H100", "9.0"))
    with pytest.raises(EngineMismatchError, match="TensorRT-RTX 1.7.1.116 but this process "
                                                  "has TensorRT-RTX 1.8.0"):
        validate_manifest(rtx_manifest, RuntimeInfo("tensorrt-rtx", "1.8.0", "x", "8.9"))


def test_plugin_graph_is_refused_for_tensorrt_rtx_with_the_export_command(tmp_path,
                                                                          stage_manifest):
    graph = OnnxGraphInfo(False, frozenset(), frozenset({"float16"}),
                          trt_plugins=frozenset({"triton_attention"}))
    folder = tmp_path / "onnx" / "dit"
    # the export command repeats the export's --dtype, read from its manifest
    stage = ExportedStage(folder, stage_manifest(folder, get_preset("tiny"), precision="fp16",
                                                 compute_dtype="float16"))
    with pytest.raises(ValueError, match=rf"no Python plugins.*cinema-trt export --preset tiny "
                                         rf"--out {tmp_path / 'onnx'} --dtype fp16 --stages dit"):
        check_backend_graph(stage, graph, TENSORRT_RTX)
    with pytest.raises(ValueError, match="ONNX Runtime has no Python plugins"):
        check_backend_graph(stage, graph, ORT)
    check_backend_graph(stage, graph, TENSORRT)  # TensorRT has them


def test_plugin_version_check_knows_tensorrt_rtx_has_no_plugins():
    from cinema_trt.kernels.trt_plugin import TensorRTUnavailableError, check_plugin_support

    check_plugin_support("tensorrt", "10.13.3.9")
    with pytest.raises(TensorRTUnavailableError, match="too old"):
        check_plugin_support("tensorrt", "10.3.0")
    # not "TensorRT 1.7 is too old": TensorRT-RTX has no plugin module at any version
    with pytest.raises(TensorRTUnavailableError, match="no Python plugins .no tensorrt_rtx"):
        check_plugin_support("tensorrt_rtx", RTX_VERSION)


def test_timing_cache_is_refused_for_tensorrt_rtx(tmp_path):
    from cinema_trt.engines.build import BuildRequest

    with pytest.raises(ValueError, match="TensorRT-RTX has no timing cache"):
        BuildRequest(tmp_path, tmp_path, BuildConfig(timing_cache=tmp_path / "t.cache"),
                     runtime="tensorrt-rtx")
    BuildRequest(tmp_path, tmp_path, BuildConfig(timing_cache=tmp_path / "t.cache"))
