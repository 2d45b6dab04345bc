"""Build manifests: one schema with exports, atomic writes, honest cache keys, refusal of
foreign engines and of old manifests with the command that remakes them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex

import pytest

from cinema_trt.engines.config import BuildConfig, Precision
from cinema_trt.engines.manifest import (
    EngineMismatchError,
    RuntimeInfo,
    cached_engine,
    engine_key,
    rebuild_command,
    sha256_file,
    validate_manifest,
    verify_plan,
)
from cinema_trt.export.manifest import BuildRecord, Manifest, read_manifest, write_manifest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import DIT

H100 = RuntimeInfo("tensorrt", "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
PROFILES = {"latents": ((1, 16, 2, 8, 8), (2, 16, 2, 8, 8), (2, 16, 3, 8, 8))}
COMMAND = rebuild_command("exported", "engines", BuildConfig(precision=Precision.FP16),
                          ("dit",), "profiles.yaml")


def _manifest(folder, runtime=H100, plan_bytes=b"plan bytes") -> Manifest:
    """The tiny DiT's export record with an fp16 engine's build record."""
    plan = folder / "model.plan"
    plan.write_bytes(plan_bytes)
    build = BuildRecord(
        runtime=runtime.runtime, runtime_version=runtime.version,
        precision="fp16", build_config=BuildConfig().to_dict(),
        profiles={"latents": {"min": [1, 16, 2, 8, 8], "opt": [2, 16, 2, 8, 8],
                              "max": [2, 16, 3, 8, 8]}},
        onnx_path="exported/dit/model.onnx", plan_file=plan.name,
        plan_sha256=sha256_file(plan), cache_key="k" * 64, rebuild_command=COMMAND,
        gpu_name=runtime.gpu_name, compute_capability=runtime.compute_capability,
        targets=["sm90"])
    tiny = get_preset("tiny")
    manifest = Manifest(stage="dit", preset="tiny", opset=20, precision=Precision.FP16,
                        compute_dtype="float16", source_sha256="0" * 64,
                        onnx_sha256="a" * 64, versions={},
                        config=json.loads(json.dumps(tiny.to_dict())),  # as stored
                        build=build, **Manifest.io_from_spec(DIT.spec(tiny)))
    write_manifest(manifest, folder)
    return manifest


def test_write_read_round_trip_leaves_no_temporary_files(tmp_path):
    manifest = _manifest(tmp_path)
    assert read_manifest(tmp_path) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "model.plan"]
    data = json.loads((tmp_path / "manifest.json").read_text())
    # one record: the export's fields, and how it was built nested under "build"
    for key in ("stage", "inputs", "outputs", "compute_dtype", "config", "onnx_sha256"):
        assert key in data
    for key in ("runtime_version", "gpu_name", "compute_capability", "precision", "profiles",
                "cache_key", "plan_sha256", "rebuild_command"):
        assert key in data["build"]


def test_an_engine_manifest_of_the_old_format_is_refused_with_its_rebuild_command(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format_version": 2, "stage": "dit", "runtime": "tensorrt",
         "rebuild_command": COMMAND}))
    with pytest.raises(ValueError, match="manifest version 2 was written by another") as error:
        read_manifest(tmp_path)
    assert str(error.value).endswith(f"remake it with:\n  {COMMAND}")


def test_an_export_manifest_of_the_old_format_is_refused_with_its_export_command(tmp_path):
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "manifest.json").write_text(json.dumps(
        {"version": 1, "stage": "dit", "preset": "small", "precision": "fp8",
         "compute_dtype": "float16"}))
    with pytest.raises(ValueError, match="manifest version 1 was written by another") as error:
        read_manifest(tmp_path / "dit")
    assert str(error.value).endswith(f"cinema-trt export --preset small --out {tmp_path} "
                                     f"--dtype fp16 --fp8 --stages dit")


def test_same_runtime_and_gpu_validates(tmp_path):
    validate_manifest(_manifest(tmp_path), H100)


def test_other_tensorrt_version_is_refused_with_the_rebuild_command(tmp_path):
    manifest = _manifest(tmp_path)
    with pytest.raises(EngineMismatchError) as error:
        validate_manifest(manifest, dataclasses.replace(H100, version="10.7.0"))
    message = str(error.value)
    assert "TensorRT 10.3.0" in message and "TensorRT 10.7.0" in message
    assert "cinema-trt build --onnx exported --out engines --precision fp16" in message
    assert COMMAND in message


def test_other_gpu_architecture_is_refused_with_the_rebuild_command(tmp_path):
    manifest = _manifest(tmp_path)
    l40 = RuntimeInfo("tensorrt", "10.3.0", "NVIDIA L40S", "8.9")
    with pytest.raises(EngineMismatchError) as error:
        validate_manifest(manifest, l40)
    assert "sm 9.0" in str(error.value) and "sm 8.9" in str(error.value)
    assert COMMAND in str(error.value)


def test_same_architecture_other_gpu_model_only_warns(tmp_path, caplog):
    h200 = RuntimeInfo("tensorrt", "10.3.0", "NVIDIA H200", "9.0")
    validate_manifest(_manifest(tmp_path), h200)
    assert "tuned on NVIDIA H100" in caplog.text


def test_engine_for_another_runtime_is_refused(tmp_path):
    with pytest.raises(EngineMismatchError, match="built for tensorrt, not ort"):
        validate_manifest(_manifest(tmp_path), RuntimeInfo("ort", "1.20.0"))


def test_changed_plan_bytes_are_refused(tmp_path):
    manifest = _manifest(tmp_path)
    assert verify_plan(tmp_path, manifest) == tmp_path / "model.plan"
    (tmp_path / "model.plan").write_bytes(b"plan bytes, edited")
    with pytest.raises(EngineMismatchError, match="does not match the manifest"):
        verify_plan(tmp_path, manifest)
    assert cached_engine(tmp_path, manifest.build.cache_key) is None


def test_cached_engine_needs_the_same_key(tmp_path):
    manifest = _manifest(tmp_path)
    assert cached_engine(tmp_path, manifest.build.cache_key) == tmp_path / "model.plan"
    assert cached_engine(tmp_path, "other") is None
    assert cached_engine(tmp_path / "missing", manifest.build.cache_key) is None


def test_corrupt_manifest_reads_as_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "dit", "version": 2}))
    with pytest.raises(ValueError, match="not a manifest of this cinema-trt"):
        read_manifest(tmp_path)


def test_cache_key_changes_when_any_input_changes(tmp_path):
    export = dataclasses.replace(_manifest(tmp_path), build=None)
    base = dict(export=export, onnx_digest="a" * 64, config=BuildConfig(), profiles=PROFILES,
                runtime=H100)
    key = engine_key(**base)
    wider = {"latents": (PROFILES["latents"][0], PROFILES["latents"][1], (2, 16, 5, 8, 8))}
    variants = {
        # the export record the build's manifest repeats: another stage, or a re-export
        # that changed only the manifest (its config's sampler defaults, say)
        "export": [dataclasses.replace(export, stage="vae_decoder"),
                   dataclasses.replace(export, config={**export.config, "name": "other"})],
        "onnx_digest": "b" * 64, "profiles": wider,
        "runtime": [dataclasses.replace(H100, version="10.7.0"),
                    dataclasses.replace(H100, compute_capability="8.9")],
        "config": [BuildConfig(precision=Precision.BF16), BuildConfig(workspace_gib=4),
                   BuildConfig(optimization_level=5), BuildConfig(weight_streaming=True),
                   BuildConfig(refittable=True), BuildConfig(strongly_typed=True)],
    }
    for field, values in variants.items():
        for value in values if isinstance(values, list) else [values]:
            assert engine_key(**{**base, field: value}) != key, (field, value)
    # the timing cache only speeds builds up: it does not change the key
    assert engine_key(**{**base, "config": BuildConfig(timing_cache="t.cache")}) == key
    assert engine_key(**base) == key


def test_rebuild_command_is_accepted_by_the_cli():
    from cinema_trt.cli import build as cli_build

    config = BuildConfig(precision=Precision.BF16, workspace_gib=2.5, optimization_level=5,
                         timing_cache="out dir/t.cache", refittable=True)
    command = rebuild_command("exp", "out dir", config, ("dit", "vae_decoder"), "p.yaml",
                              "tensorrt")
    parser = argparse.ArgumentParser()
    cli_build.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(shlex.split(command)[1:])
    request = cli_build.build_request(args)
    assert request.build_config == config
    assert request.stages == ("dit", "vae_decoder")
    assert str(request.profile) == "p.yaml" and request.runtime == "tensorrt"
    ort = rebuild_command("exp", "out", BuildConfig(precision=Precision.FP32), (), None,
                          "ort")
    assert cli_build.build_request(parser.parse_args(shlex.split(ort)[1:])).runtime == "ort"


def test_a_streaming_budget_needs_an_engine_built_to_stream(tmp_path):
    """The bug it catches: a budget set on an engine built without weight streaming
    (TensorRT refuses it only at load, on a GPU); refused here with the rebuild command."""
    from cinema_trt.engines.manifest import check_streaming_budget

    build = _manifest(tmp_path).build
    with pytest.raises(ValueError, match=f"(?s)weight streaming.*{COMMAND} --weight-streaming"):
        check_streaming_budget(build, "dit", 2**30)
    streaming = dataclasses.replace(
        build, build_config=BuildConfig(weight_streaming=True).to_dict())
    check_streaming_budget(streaming, "dit", 2**30)
    with pytest.raises(ValueError, match="must be >= 0"):
        check_streaming_budget(streaming, "dit", -1)


def test_budgets_for_graphs_without_engines_are_refused_before_loading(tmp_path):
    from cinema_trt.engines.trt_runtime import tensorrt_runners

    (tmp_path / "dit").mkdir()
    _manifest(tmp_path / "dit")
    with pytest.raises(ValueError, match=r"budgets for \['vae_decoder'\].*engines: \['dit'\]"):
        tensorrt_runners(tmp_path, weight_streaming_budgets={"vae_decoder": 1})
