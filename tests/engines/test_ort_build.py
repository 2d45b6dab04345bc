"""`build --runtime ort`: an ORT-optimized CPU model of a tiny exported stage, its manifest,
its cache, and the runner-side shape check against the recorded profiles."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cinema_trt.engines.config import BuildConfig, Precision
from cinema_trt.engines.deps import runtime_info
from cinema_trt.engines.exported import ExportedStage
from cinema_trt.engines.manifest import validate_manifest, verify_plan
from cinema_trt.engines.ort_build import build_ort_model
from cinema_trt.engines.shape_check import check_input_shapes
from cinema_trt.engines.shapes import shapes_from_dict
from cinema_trt.export.manifest import TensorEntry, read_manifest
from cinema_trt.models.backends import ORT
from cinema_trt.models.fileio import sha256_file

FP32 = BuildConfig(precision=Precision.FP32)


@pytest.fixture(scope="module")
def built(connector_export, tiny, tmp_path_factory):
    folder, module = connector_export
    out = tmp_path_factory.mktemp("engines") / "connector"
    shapes = shapes_from_dict({"seq": {"min": 2, "opt": 16, "max": 64}}, tiny)
    model = build_ort_model(ExportedStage.read(folder / "connector"), out, shapes, FP32)
    return model, module, shapes


def test_optimized_model_matches_torch(built):
    model, module, _ = built
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    hidden = torch.randn(1, 23, 64)
    mask = torch.ones(1, 23, dtype=torch.int64)
    mask[0, 17:] = 0  # padding must not change the result
    with torch.inference_mode():
        expected = module(hidden, mask).numpy()
    (got,) = session.run(["text_states"], {"hidden_states": hidden.numpy(),
                                           "attention_mask": mask.numpy()})
    # fp32 on both sides; graph rewrites (fused matmul+add, reordered softmax) change the
    # summation order only: a few fp32 ulps of outputs of size ~1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_manifest_describes_the_ort_model(built):
    model, _, _ = built
    manifest = read_manifest(model.parent)
    build = manifest.build
    assert build.runtime == ORT.name and build.runtime_version == ort.__version__
    assert manifest.stage == "connector" and build.precision == "fp32"
    assert build.compute_capability is None
    assert build.profiles["hidden_states"] == {"min": [1, 2, 64], "opt": [1, 16, 64],
                                               "max": [1, 64, 64]}
    assert build.extra["graph_optimization_level"] == "ORT_ENABLE_ALL"
    # one record: the export's manifest, with how it was built filled in
    assert dataclasses.replace(manifest, build=None) == \
        read_manifest(Path(build.onnx_path).parent)
    assert "--runtime ort" in build.rebuild_command
    assert "--stages connector" in build.rebuild_command
    validate_manifest(manifest, runtime_info(ORT.name))
    assert verify_plan(model.parent, manifest) == model


def test_the_build_folder_describes_its_stage_without_the_export(connector_export, tiny,
                                                                 tmp_path):
    export = tmp_path / "onnx" / "connector"
    shutil.copytree(connector_export[0] / "connector", export)
    build_ort_model(ExportedStage.read(export), tmp_path / "built", shapes_from_dict({}, tiny),
                    FP32)
    shutil.rmtree(tmp_path / "onnx")
    manifest = read_manifest(tmp_path / "built")
    assert (manifest.stage, manifest.compute_dtype, manifest.build.runtime) == \
        ("connector", "float32", ORT.name)
    assert manifest.inputs == (TensorEntry("hidden_states", "float32", ("batch", "seq", 64)),
                               TensorEntry("attention_mask", "int64", ("batch", "seq")))
    assert manifest.outputs == (TensorEntry("text_states", "float32", ("batch", 16, 48)),)
    assert manifest.model_file == "model.onnx"  # the optimized graph, beside the manifest


def test_unchanged_inputs_reuse_the_model_and_changes_rebuild_it(built, connector_export, tiny):
    model, _, shapes = built
    stage = ExportedStage.read(connector_export[0] / "connector")
    stamp = model.stat().st_mtime_ns
    key = read_manifest(model.parent).build.cache_key
    assert build_ort_model(stage, model.parent, shapes, FP32) == model
    assert model.stat().st_mtime_ns == stamp
    basic = dataclasses.replace(FP32, optimization_level=1)
    build_ort_model(stage, model.parent, shapes, basic)
    rebuilt = read_manifest(model.parent).build
    assert rebuilt.cache_key != key
    assert rebuilt.extra["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    build_ort_model(stage, model.parent, shapes, FP32)  # back to the fixture's
    assert read_manifest(model.parent).build.cache_key == key


def test_shape_check_names_the_tensor_dim_and_range(built):
    manifest = read_manifest(built[0].parent)
    check_input_shapes(manifest, {"hidden_states": (1, 64, 64), "attention_mask": (1, 64)})
    with pytest.raises(ValueError) as error:
        check_input_shapes(manifest, {"hidden_states": (1, 65, 64), "attention_mask": (1, 65)})
    message = str(error.value)
    assert "connector: input 'hidden_states' dim 1 (seq) is 65" in message
    assert "profile range [2, 64]" in message and "widen `seq` in profiles.yaml" in message
    assert manifest.build.rebuild_command in message
    with pytest.raises(ValueError, match="expects 3 dims"):
        check_input_shapes(manifest, {"hidden_states": (65, 64), "attention_mask": (1, 65)})
    with pytest.raises(ValueError, match=r"missing \['attention_mask'\], unexpected \['mask'\]"):
        check_input_shapes(manifest, {"hidden_states": (1, 8, 64), "mask": (1, 8)})


def test_ort_builds_the_exports_own_precision(connector_export, tiny, tmp_path):
    """ORT has no weak typing: fp16 comes from an fp16 export, never from a flag; bf16 and
    fp8 are TensorRT's (ORT's CPU provider has no bf16 kernels)."""
    stage = ExportedStage.read(connector_export[0] / "connector")
    shapes = shapes_from_dict({}, tiny)
    with pytest.raises(ValueError, match="precision=fp16 on .* which computes in float32: "
                                         "--runtime ort runs an export as it is"):
        build_ort_model(stage, tmp_path, shapes, BuildConfig(precision="fp16"))
    for precision in ("bf16", "fp8"):
        with pytest.raises(ValueError, match=f"precision={precision} is not available with "
                                             "--runtime ort"):
            build_ort_model(stage, tmp_path, shapes, BuildConfig(precision=precision))


def test_graph_that_does_not_match_its_manifests_stage_is_refused(connector_export, tiny,
                                                                  tmp_path, stage_manifest):
    export = tmp_path / "dit"
    shutil.copytree(connector_export[0] / "connector", export)
    stage_manifest(export, tiny)  # a manifest saying "dit" beside the connector's graph
    with pytest.raises(ValueError, match=r"graph inputs \['attention_mask', 'hidden_states'\] "
                                         r"are not in the dit spec"):
        build_ort_model(ExportedStage.read(export), tmp_path / "built",
                        shapes_from_dict({}, tiny), FP32)


def test_sidecars_travel_with_the_build_and_a_new_export_manifest_rebuilds(connector_export,
                                                                           tiny, tmp_path):
    """The files the export's manifest lists as sidecars (mllm_text's HF config and
    embeddings) are copied, others are not; a re-export that keeps the graph bytes but
    changes its manifest is rebuilt (the cache key covers the export record), so the
    build's manifest is never stale."""
    export = tmp_path / "onnx" / "connector"
    shutil.copytree(connector_export[0] / "connector", export)
    (export / "glue.json").write_text('{"why": "read by the runner beside the graph"}')
    (export / "notes.txt").write_text("a file the manifest does not list")
    data = json.loads((export / "manifest.json").read_text())
    data["sidecars"] = {"glue.json": sha256_file(export / "glue.json")}
    (export / "manifest.json").write_text(json.dumps(data))
    out, shapes = tmp_path / "built", shapes_from_dict({}, tiny)
    model = build_ort_model(ExportedStage.read(export), out, shapes, FP32)
    assert (out / "glue.json").read_text() == (export / "glue.json").read_text()
    assert not (out / "notes.txt").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files
    stamp = model.stat().st_mtime_ns
    assert build_ort_model(ExportedStage.read(export), out, shapes, FP32) == model
    assert model.stat().st_mtime_ns == stamp  # same graph, same manifest: reused

    data = json.loads((export / "manifest.json").read_text())
    data["versions"]["note"] = "re-exported"
    (export / "manifest.json").write_text(json.dumps(data))
    build_ort_model(ExportedStage.read(export), out, shapes, FP32)
    assert model.stat().st_mtime_ns != stamp
    assert read_manifest(out).versions["note"] == "re-exported"


def test_a_graph_without_its_export_manifest_is_refused(connector_export, tiny, tmp_path):
    export = tmp_path / "connector"
    shutil.copytree(connector_export[0] / "connector", export)
    (export / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="is not a complete export"):
        build_ort_model(ExportedStage.read(export), tmp_path / "built",
                        shapes_from_dict({}, tiny), FP32)


def test_the_artifact_cache_reuses_a_build_and_remakes_a_changed_one(connector_export,
                                                                     tmp_path):
    """`cached_build`, what demo and bench build through (runtime ort here, the only one a
    CPU builds): reused under the same key; a model whose bytes changed is remade, not
    reused; another profile is another entry."""
    from cinema_trt.engines.build import cached_build
    from cinema_trt.models.cache import ArtifactCache, Entry

    cache = ArtifactCache(tmp_path)
    export = Entry(connector_export[0], key="the export's key", reused=True)

    def build(**kwargs):
        return cached_build(cache, export, FP32, runtime="ort", stages=("connector",), **kwargs)

    first = build()
    again = build()
    assert (first.reused, again.reused, again.path) == (False, True, first.path)
    manifest = read_manifest(first.path / "connector")
    # the entry was built in a staging folder: its rebuild command names the entry itself
    assert f"--out {first.path} " in manifest.build.rebuild_command, manifest.build.rebuild_command
    model = first.path / "connector" / manifest.model_file
    model.write_bytes(model.read_bytes() + b"\0")
    remade = build()
    assert not remade.reused and remade.path == first.path
    verify_plan(first.path / "connector", read_manifest(first.path / "connector"))
    profiled = build(profile={"seq": {"min": 2, "opt": 16, "max": 64}})
    assert not profiled.reused and profiled.path != first.path
    assert read_manifest(profiled.path / "connector").build.profiles["hidden_states"] == {
        "min": [1, 2, 64], "opt": [1, 16, 64], "max": [1, 64, 64]}
