"""Everything the TensorRT build decides before calling the builder, tested without it:
builder settings, build progress, log levels, and the install hints."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cinema_trt.engines.artifacts import prepare_build
from cinema_trt.engines.config import BuildConfig, Precision
from cinema_trt.engines.deps import MissingDependencyError
from cinema_trt.engines.exported import ExportedStage
from cinema_trt.engines.manifest import EngineMismatchError, RuntimeInfo
from cinema_trt.engines.progress import BuildProgress, log_level
from cinema_trt.engines.shapes import shapes_from_dict
from cinema_trt.engines.trt_build import builder_settings
from cinema_trt.export.manifest import read_manifest, write_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
H100 = RuntimeInfo("tensorrt", "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def _prepare(onnx_dir, tmp_path, tiny, config):
    shapes = shapes_from_dict({"seq": {"min": 1, "opt": 32, "max": 256}}, tiny)
    return prepare_build(ExportedStage.read(onnx_dir / "connector"), tmp_path / "connector",
                         shapes, config, H100)


def test_fp16_build_of_a_plain_graph(connector_export, tmp_path, tiny):
    config = BuildConfig(precision=Precision.FP16, workspace_gib=2, optimization_level=4,
                         timing_cache=tmp_path / "t.cache")
    settings = builder_settings(_prepare(connector_export[0], tmp_path, tiny, config))
    assert settings == {
        "network_flags": [], "builder_flags": ["FP16"], "workspace_bytes": 2 << 30,
        "optimization_level": 4, "timing_cache": tmp_path / "t.cache",
        # TensorRT compiles for the GPU it builds on: no ahead-of-time targets to set
        "compute_capabilities": [], "profiling_verbosity": "DETAILED",
        "profiles": {"hidden_states": ((1, 1, 64), (1, 32, 64), (1, 256, 64)),
                     "attention_mask": ((1, 1), (1, 32), (1, 256))}}


def test_the_build_takes_the_compute_dtype_from_the_export_manifest(connector_export, tmp_path,
                                                                   tiny, stage_manifest):
    """The manifest is believed, not checked against the initializers: here it says float16
    for the fp32-weight connector graph, so fp32 is refused and fp16 builds strongly typed
    (the graph's own types). The exporter writes both; a graph edited after export is built
    as its manifest describes it (`check_export(graph_hash=False)`)."""
    import shutil

    export = tmp_path / "onnx"
    shutil.copytree(connector_export[0] / "connector", export / "connector")
    stage_manifest(export / "connector", tiny, precision="fp16", compute_dtype="float16")
    with pytest.raises(ValueError, match="precision=fp32 does not match the export, which "
                                         r"computes in float16 \(exported with --dtype fp16\)"):
        _prepare(export, tmp_path, tiny, BuildConfig(precision=Precision.FP32))
    build = _prepare(export, tmp_path, tiny, BuildConfig(precision=Precision.FP16))
    assert builder_settings(build)["network_flags"] == ["STRONGLY_TYPED"]
    assert builder_settings(build)["builder_flags"] == []  # no FP16 flag: the graph's types
    # the same graph under its true manifest (float32) builds weakly typed with the flag
    fp32 = _prepare(connector_export[0], tmp_path, tiny, BuildConfig(precision=Precision.FP16))
    assert builder_settings(fp32)["builder_flags"] == ["FP16"]


def test_fp8_qdq_graph_builds_strongly_typed(fp8_connector_graph, tmp_path, tiny, caplog):
    build = _prepare(fp8_connector_graph[0], tmp_path, tiny, BuildConfig(precision=Precision.FP8,
                                                                refittable=True))
    settings = builder_settings(build)
    assert settings["network_flags"] == ["STRONGLY_TYPED"]
    assert settings["builder_flags"] == ["REFIT"]
    assert build.build_config.strongly_typed
    # the test graph keeps fp32 outside its Q/DQ pairs, which the build warns about
    assert "run in float32" in caplog.text
    assert "--precision fp8" in build.rebuild_command and "--refittable" in build.rebuild_command


def test_fp8_test_graph_computes_its_reference(fp8_connector_graph):
    """ONNX Runtime (CPU) agrees with the PyTorch reference the GPU tests compare against."""
    folder, weights, reference = fp8_connector_graph
    session = ort.InferenceSession(str(folder / "connector" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    torch.manual_seed(2)
    hidden = torch.randn(2, 11, 64)
    mask = torch.ones(2, 11, dtype=torch.int64)
    mask[1, 6:] = 0
    (got,) = session.run(None, {"hidden_states": hidden.numpy(), "attention_mask": mask.numpy()})
    expected = reference(weights, hidden, mask).numpy()
    # identical FP8 rounding on both sides; fp32 summation order differs: ~1e-6 relative.
    # (A value landing on an FP8 rounding tie could flip one step, 2^-3 relative, so the
    # tolerance would catch a wrong scale or a missing Q/DQ, not a rare tie.)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_cache_key_differs_between_precisions(connector_export, tmp_path, tiny):
    fp16 = _prepare(connector_export[0], tmp_path, tiny, BuildConfig(precision=Precision.FP16))
    bf16 = _prepare(connector_export[0], tmp_path, tiny, BuildConfig(precision=Precision.BF16))
    assert fp16.cache_key != bf16.cache_key
    assert fp16.onnx_digest == bf16.onnx_digest


def test_progress_tracks_nested_phases_and_can_cancel(caplog):
    stop = {"now": False}
    progress = BuildProgress("dit", show_bars=False, should_stop=lambda: stop["now"])
    with caplog.at_level(logging.DEBUG, logger="cinema_trt.engines.tensorrt"):
        progress.phase_start("Building engine", None, 3)
        progress.phase_start("Tactic timing", "Building engine", 10)
        assert progress.step_complete("Tactic timing", 0)
        stop["now"] = True
        assert not progress.step_complete("Tactic timing", 1)  # False cancels the build
        progress.phase_finish("Tactic timing")
        progress.phase_finish("Building engine")
    assert progress.phases == {"Building engine": (0, 3), "Tactic timing": (1, 10)}
    assert progress.completed["Tactic timing"] == 2
    assert progress.finished == ["Tactic timing", "Building engine"]
    assert "dit: Building engine (3 steps)" in caplog.text


def test_progress_bars_close_with_their_phase():
    progress = BuildProgress("vae", show_bars=True)
    progress.phase_start("Building engine", None, 4)
    progress.phase_start("Layer fusion", "Building engine", 2)  # depth 1: a bar too
    progress.phase_start("Kernel search", "Layer fusion", 5)  # depth 2: no bar
    assert sorted(progress._bars) == ["Building engine", "Layer fusion"]
    progress.step_complete("Building engine", 1)
    assert progress._bars["Building engine"].n == 2
    progress.phase_finish("Layer fusion")
    assert sorted(progress._bars) == ["Building engine"]
    progress.close()
    assert progress._bars == {}


def test_tensorrt_severities_map_to_logging_levels():
    assert log_level("Severity.ERROR") == logging.ERROR
    assert log_level("INTERNAL_ERROR") == logging.CRITICAL
    assert log_level("Severity.WARNING") == logging.WARNING
    assert log_level("INFO") == logging.DEBUG  # TensorRT's INFO reports every layer


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown without TensorRT")
def test_build_and_run_without_tensorrt_explain_how_to_install_it(connector_export, tmp_path,
                                                                    tiny):
    from cinema_trt.engines.ort_build import build_ort_model
    from cinema_trt.engines.trt_build import build_engine
    from cinema_trt.engines.trt_runtime import TensorRTRunner

    stage = ExportedStage.read(connector_export[0] / "connector")
    shapes = shapes_from_dict({}, tiny)
    with pytest.raises(MissingDependencyError, match=r"pip install 'cinema-trt\[gpu\]'"):
        build_engine(stage, tmp_path / "trt", shapes, BuildConfig())
    assert not (tmp_path / "trt").exists()
    built = build_ort_model(stage, tmp_path / "ort", shapes,
                            BuildConfig(precision=Precision.FP32))
    with pytest.raises(EngineMismatchError, match="holds an ONNX Runtime model, not a TensorRT"):
        TensorRTRunner(built.parent)
    # the same folder described as a TensorRT engine: loading it needs TensorRT
    manifest = read_manifest(built.parent)
    write_manifest(dataclasses.replace(
        manifest, build=dataclasses.replace(manifest.build, runtime="tensorrt")), built.parent)
    with pytest.raises(MissingDependencyError, match="nvcr.io/nvidia/tensorrt"):
        TensorRTRunner(built.parent)
    assert isinstance(MissingDependencyError("x"), ImportError)
