"""One content hash for an ONNX graph and one validity check of an export.

The exporter's manifest, the engine build's cache key, serving's verification and the
benchmark's export cache must agree on the hash, also for a graph whose weights live in
external data (every paper-scale DiT and MLLM). Before they shared
`models/fileio.onnx_sha256`, the engines package also hashed the data file's name and the
two disagreed for exactly those graphs."""

from __future__ import annotations

import functools

import pytest

from cinema_trt.engines.artifacts import prepare_build
from cinema_trt.engines.config import BuildConfig
from cinema_trt.engines.exported import ExportedStage
from cinema_trt.engines.manifest import RuntimeInfo
from cinema_trt.engines.shapes import shapes_from_dict
from cinema_trt.export import driver
from cinema_trt.export.manifest import (
    EXTERNAL_DATA_FILE,
    MODEL_FILE,
    ExportExpectation,
    check_export,
    read_manifest,
)
from cinema_trt.models.fileio import onnx_sha256


@pytest.fixture(scope="module")
def external_data_export(tiny_config, tmp_path_factory, require):
    """The tiny connector exported by the real exporter, its weights forced into
    model.onnx.data (the exporter does that above 2 GB; threshold 0 here)."""
    require("onnxruntime", 'pip install -e ".[onnx]"')
    out = tmp_path_factory.mktemp("external-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(driver, "save_onnx", functools.partial(driver.save_onnx, threshold=0))
        driver.export_stages(tiny_config, out, stages=["connector"], progress=False)
    return out / "connector"


def test_export_and_engine_build_hash_an_external_data_graph_alike(
        external_data_export, tiny_config, tmp_path):
    stage_dir = external_data_export
    manifest = read_manifest(stage_dir)
    assert manifest.external_data and (stage_dir / EXTERNAL_DATA_FILE).is_file()
    shapes = shapes_from_dict({}, tiny_config)
    build = prepare_build(ExportedStage.read(stage_dir), tmp_path / "connector", shapes,
                          BuildConfig(), RuntimeInfo("tensorrt", "10.3.0", "H100", "9.0"))
    assert build.onnx_digest == manifest.onnx_sha256 == onnx_sha256(stage_dir / MODEL_FILE)
    # serving, the demo and the repository generator accept the folder as exported
    assert check_export(stage_dir, ExportExpectation(config=tiny_config)) == manifest


def test_the_hash_covers_the_external_weights_not_their_file_name(external_data_export,
                                                                   tmp_path):
    copy = tmp_path / "connector"
    copy.mkdir()
    for name in (MODEL_FILE, EXTERNAL_DATA_FILE):
        (copy / name).write_bytes((external_data_export / name).read_bytes())
    before = onnx_sha256(copy / MODEL_FILE)
    assert before == onnx_sha256(external_data_export / MODEL_FILE)  # content, not the folder
    data = copy / EXTERNAL_DATA_FILE
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1  # one bit of one weight
    data.write_bytes(bytes(raw))
    assert onnx_sha256(copy / MODEL_FILE) != before
    data.unlink()
    with pytest.raises(FileNotFoundError, match="references external data"):
        onnx_sha256(copy / MODEL_FILE)


def test_one_check_refuses_an_export_made_for_something_else(external_data_export,
                                                              tiny_config):
    """check_export is the validity check of the build, the repository, serving, the demo
    and the benchmark cache: each mismatch is refused with a short reason and the fix."""
    import dataclasses

    from cinema_trt.export.manifest import Precision, StaleExportError

    deeper = dataclasses.replace(tiny_config, aligner=dataclasses.replace(
        tiny_config.aligner, depth=tiny_config.aligner.depth + 1))
    cases = {"another model architecture": ExportExpectation(config=deeper),
             "precision fp32": ExportExpectation(precision=Precision.FP16),
             "computes in float32": ExportExpectation(compute_dtype="bfloat16"),
             "other weights": ExportExpectation(source_sha256="0" * 64)}
    for reason, expect in cases.items():
        with pytest.raises(StaleExportError, match="re-export the stage") as error:
            check_export(external_data_export, expect)
        assert error.value.reason == reason
