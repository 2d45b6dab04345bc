"""`cinema-trt build --runtime ort` output is runnable: its manifests describe their stages
(the export's record + how it was built), the MLLM glue is copied, and `ort_runners` /
`generate --runtime ort --onnx <built>` run the whole pipeline on the optimized graphs with
the torch pipeline's result."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import onnxruntime
import pytest

from cinema_trt.cli.main import main
from cinema_trt.export.manifest import MANIFEST_FILE, check_export, read_manifest
from cinema_trt.export.ort import OrtRunner, ort_runners
from cinema_trt.models.media import sample_references
from cinema_trt.models.mllm_split import GLUE_FILES
from cinema_trt.models.pipeline import CinemaPipeline
from cinema_trt.models.stages import GRAPH_NAMES, MLLM, STAGES

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow  # needs the session export

# The export folder's gate (tests/export/test_pipeline_ort.py, from
# benchmarks/results/fidelity-tiny-20261129.json): fp32 graphs measured 87.6-93.0 dB
# against torch, another prompt moves the video to 56.4-58.7 dB, one reference fewer to
# 49.2-51.4. ORT's optimizations only reorder and fuse fp32 arithmetic, so the built graphs
# are held to the same floor (measured 91.2 dB on this test's request, what the export
# folder's graphs give on it too).
FP32_MIN_PSNR = 80.0


@pytest.fixture(scope="module")
def built(fp32_export, tmp_path_factory):
    """Every stage of the tiny fp32 export, built by the CLI with --runtime ort."""
    out = tmp_path_factory.mktemp("built_ort")
    assert main(["build", "--onnx", str(fp32_export[0]), "--out", str(out),
                 "--precision", "fp32", "--runtime", "ort"]) == 0
    return out


def test_build_manifests_are_the_export_records_and_the_mllm_glue_is_copied(built,
                                                                          fp32_export):
    export = fp32_export[0]
    for stage in GRAPH_NAMES:
        manifest = read_manifest(built / stage)
        # the exporter's record, with how it was built filled in
        assert dataclasses.replace(manifest, build=None) == read_manifest(export / stage)
        assert manifest.build.runtime == "ort"  # models/backends.py ORT.name
        # the optimized graph, not a copy of the exported one
        model = built / stage / manifest.model_file
        assert model.read_bytes() != (export / stage / "model.onnx").read_bytes()
    for name in GLUE_FILES:
        assert (built / MLLM.glue / name).read_bytes() == (export / MLLM.glue / name).read_bytes()


def test_pipeline_on_the_built_models_matches_torch(built, tiny_models, request_and_reference,
                                                    psnr):
    """>= FP32_MIN_PSNR, the bound of the export-folder test: ORT's fusions only reorder
    fp32 sums (~1e-6 relative), at most one uint8 level on a few pixels."""
    request, reference = request_and_reference
    runners = ort_runners(built)
    assert set(runners) == {s.name for s in STAGES}
    for name, runner in runners.items():
        if isinstance(runner, OrtRunner):  # "mllm" composes the two built MLLM graphs
            assert runner.model_path == built / name / "model.onnx"
            assert runner.providers == ["CPUExecutionProvider"]  # built for the CPU
    video = CinemaPipeline(tiny_models.config, runners, tiny_models.processor).generate(request)
    assert video.shape == reference.shape and video.dtype == np.uint8
    value = psnr(video, reference)
    log.info("ORT-built fp32 pipeline PSNR vs torch fp32: %.1f dB", value)
    assert value >= FP32_MIN_PSNR


def test_generate_cli_runs_on_the_built_models(built, tmp_path, psnr):
    """PNG frames are lossless, so the comparison is the pipelines', not the codec's."""
    from PIL import Image

    common = ["generate", "--ref", str(sample_references()[1]), "--prompt",
              "a blue square spins", "--frames", "5", "--height", "32", "--width", "32",
              "--steps", "2", "--quiet"]
    assert main(common + ["-o", str(tmp_path / "torch")]) == 0
    assert main(common + ["--runtime", "ort", "--onnx", str(built),
                          "-o", str(tmp_path / "ort")]) == 0

    def frames(folder):
        return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])

    torch_frames, ort_frames = frames(tmp_path / "torch"), frames(tmp_path / "ort")
    assert torch_frames.shape == ort_frames.shape == (5, 32, 32, 3)
    assert psnr(ort_frames, torch_frames) >= FP32_MIN_PSNR


def _edited_build(built, tmp_path, edit):
    """A copy of the built connector folder with its manifest (as JSON) edited by `edit`."""
    folder = tmp_path / "connector"
    shutil.copytree(built / "connector", folder)
    data = json.loads((folder / MANIFEST_FILE).read_text())
    edit(data)
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    return folder


def test_the_unedited_copy_runs(built, tmp_path):
    """The baseline of the refusals below: a copied build opens as it is."""
    assert OrtRunner(_edited_build(built, tmp_path, lambda data: None)).name == "connector"


def test_a_tensorrt_engine_folder_is_refused_by_name(built, tmp_path):
    folder = _edited_build(built, tmp_path,
                           lambda data: data["build"].update(runtime="tensorrt"))
    with pytest.raises(ValueError, match="is a tensorrt engine, which ONNX Runtime cannot run"):
        OrtRunner(folder)


def test_a_build_from_another_onnxruntime_version_is_refused_with_the_rebuild_command(
        built, tmp_path):
    folder = _edited_build(built, tmp_path,
                           lambda data: data["build"].update(runtime_version="0.1"))
    with pytest.raises(ValueError) as error:
        OrtRunner(folder)
    message = str(error.value)
    assert f"optimized by ONNX Runtime 0.1 but this process has {onnxruntime.__version__}" \
        in message
    assert "cinema-trt build --onnx" in message and "--runtime ort" in message


def test_a_build_of_an_older_cinema_trt_is_refused_with_its_rebuild_command(built, tmp_path):
    """The engine-manifest format of before one schema (a flat record, `format_version` 2,
    the export manifest carried in `extra`) is not read as something it is not."""
    def old_format(data):
        build = data.pop("build")
        data.clear()
        data.update({**build, "format_version": 2, "extra": {"export_manifest": {}}})

    _edited_build(built, tmp_path, old_format)
    with pytest.raises(ValueError, match="manifest version 2 was written by another "
                                         r"cinema-trt.*\n  cinema-trt build --onnx .* "
                                         "--runtime ort"):
        ort_runners(tmp_path)  # tmp_path holds the edited connector folder only


def test_the_export_check_takes_export_folders_only(built):
    """Export hashes do not describe an optimized graph: build folders are named as such."""
    with pytest.raises(ValueError, match=r"is a `cinema-trt build` folder \(ort\), "
                                         "not an export; pass the export folder"):
        check_export(built / "dit")
