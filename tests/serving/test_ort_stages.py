"""Runtime `ort`: Python-backend stage models that serve the exported ONNX graphs with ONNX
Runtime (the bundled server has no onnxruntime backend): the repository layout, and the
checks that refuse graphs which are not what their manifests describe.

The export is the session's tiny fp32 export (tests/conftest.py) and the weights the
session's tiny weights: the same seed, so the export's manifests match the weights. The
served video's bit-for-bit match with the in-process ORT pipeline is checked in
test_demo.py, on the demo's server, which runs exactly this kind of repository.
"""

import json
import shutil

import pytest

from cinema_trt.models.stages import STAGE_NAMES as STAGES
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.stage_model import load_stage_runner
from cinema_trt.serving.triton_config import parse_config

# the session's full export; Triton configs are protobufs of the serve extra
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("serve_extra")]

ORT = RepositoryOptions(runtime="ort")


@pytest.fixture(scope="module")
def weights(tiny_weights):
    return tiny_weights


@pytest.fixture(scope="module")
def export(fp32_export):
    return fp32_export[0]


@pytest.fixture(scope="module")
def repo(weights, export, tmp_path_factory):
    return build_repository(None, tmp_path_factory.mktemp("ort-repo") / "models", weights,
                            export, ORT)


def test_version_folders_hold_the_stage_graphs_and_no_torch_weights(repo, export):
    assert sorted(p.name for p in (repo / "mllm/1/onnx").iterdir()) == ["mllm_text",
                                                                        "mllm_vision"]
    assert (repo / "mllm/1/onnx/mllm_text").resolve() == (export / "mllm_text").resolve()
    for stage in STAGES:
        version = repo / stage / "1"
        assert sorted(p.name for p in version.iterdir()) == ["cinema_config.json", "model.py",
                                                             "onnx"]
        config = parse_config((repo / stage / "config.pbtxt").read_text())
        assert config.backend == "python"
        assert config.parameters["runtime"].string_value == "ort"
    assert [p.name for p in (repo / "dit/1/onnx").iterdir()] == ["dit"]


def _copied_version(repo, stage, tmp_path):
    copy = tmp_path / f"{stage}-1"
    shutil.copytree(repo / stage / "1", copy)  # follows the symlinks: a private copy
    return copy


def test_a_graph_changed_after_export_is_refused_before_loading(repo, tmp_path):
    version = _copied_version(repo, "connector", tmp_path)
    assert load_stage_runner(version, "connector", runtime="ort").name == "connector"
    graph = version / "onnx/connector/model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")  # one byte more than the manifest hashed
    with pytest.raises(ValueError, match="sha256 of .*model.onnx.* its manifest records"):
        load_stage_runner(version, "connector", runtime="ort")


def test_runtime_ort_needs_a_complete_export_of_the_same_architecture(weights, export,
                                                                      tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    (partial / "dit" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dit/manifest.json not found"):
        build_repository(None, tmp_path / "models", weights, partial, ORT)
    assert not (tmp_path / "models").exists()  # nothing half-built is left behind

    foreign = tmp_path / "foreign"
    shutil.copytree(export, foreign)
    manifest = json.loads((foreign / "dit" / "manifest.json").read_text())
    manifest["config"]["dit"]["width"] = 64  # as if exported from a wider model
    (foreign / "dit" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="dit.width=64"):
        build_repository(None, tmp_path / "models", weights, foreign, ORT)


def test_runtime_applies_to_the_python_backend_only():
    with pytest.raises(ValueError, match="runtime='ort' is for the python backend"):
        RepositoryOptions(backend="onnxruntime", runtime="ort")
    with pytest.raises(ValueError, match="runtime='onnx' must be one of"):
        RepositoryOptions(runtime="onnx")


def test_the_onnxruntime_backend_runs_the_split_mllm_in_the_python_backend(weights, export,
                                                                          tmp_path):
    # Triton's onnxruntime backend serves one graph per model; the MLLM is two graphs
    # joined by torch glue, so that one stage falls back to runtime ort
    out = build_repository(None, tmp_path / "models", weights, export,
                           RepositoryOptions(backend="onnxruntime"))
    mllm = parse_config((out / "mllm/config.pbtxt").read_text())
    assert (mllm.backend, mllm.parameters["runtime"].string_value) == ("python", "ort")
    assert sorted(p.name for p in (out / "mllm/1/onnx").iterdir()) == ["mllm_text",
                                                                       "mllm_vision"]
    dit = parse_config((out / "dit/config.pbtxt").read_text())
    assert (dit.backend, dit.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert (out / "dit/1/model.onnx").resolve() == (export / "dit/model.onnx").resolve()
