"""The model repository generator: configs Triton can parse, derived from the stage specs,
and version folders that hold exactly what each model loads. No server is started here."""

import pytest
import torch

from cinema_trt.models.factory import load_models, torch_runners
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import STAGES
from cinema_trt.models.stages import stage as get_stage
from cinema_trt.serving import protocol
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.stage_model import load_stage_runner
from cinema_trt.serving.triton_config import Placement, parse_config

# Triton's configs are protobufs of the serve extra
pytestmark = pytest.mark.usefixtures("serve_extra")

TINY = get_preset("tiny")
SPECS = {s.name: s.spec(TINY) for s in STAGES}


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    return build_repository(TINY, tmp_path_factory.mktemp("repo") / "models", tiny_weights)


def configs(repo):
    return {path.parent.name: parse_config(path.read_text())
            for path in sorted(repo.glob("*/config.pbtxt"))}


def test_one_model_per_stage_plus_the_orchestrator(repo):
    assert set(configs(repo)) == set(SPECS) | {"cinema"}


def test_stage_configs_follow_the_specs_with_symbols_as_minus_one(repo):
    from tritonclient.grpc import model_config_pb2 as pb

    for stage, config in configs(repo).items():
        if stage == "cinema":
            continue
        spec = SPECS[stage]
        assert config.name == stage and config.backend == "python"
        assert config.max_batch_size == 0  # the batch is an explicit -1 dim
        for tensors, specs in ((config.input, spec.inputs), (config.output, spec.outputs)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for tensor, s in zip(tensors, specs, strict=True):
                assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in s.dims]
                expected = {torch.int64: "TYPE_INT64", torch.bool: "TYPE_BOOL"}.get(
                    s.dtype, "TYPE_FP32")  # the decoder's `first` flag is the one bool
                assert pb.DataType.Name(tensor.data_type) == expected
        assert config.parameters["stage"].string_value == stage
        assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU


def test_orchestrator_is_decoupled_with_the_protocol_schema(repo):
    config = configs(repo)["cinema"]
    assert config.model_transaction_policy.decoupled
    assert [(t.name, t.optional) for t in config.input] == \
        [(f.name, f.optional) for f in protocol.INPUTS]
    assert [t.name for t in config.output] == [f.name for f in protocol.OUTPUTS]
    assert config.parameters["max_concurrency"].string_value == "2"


def test_version_folders_hold_only_their_stage_weights(repo, tiny_weights):
    assert (repo / "mllm/1/mllm").resolve() == (tiny_weights / "mllm").resolve()
    assert sorted(p.name for p in (repo / "dit/1").iterdir()) == \
        ["cinema_config.json", "dit.safetensors", "model.py"]
    assert (repo / "vae_encoder/1/vae.safetensors").resolve() == \
        (tiny_weights / "vae.safetensors").resolve()
    # the orchestrator gets the processor files but none of the MLLM weights
    processor_files = {p.name for p in (repo / "cinema/1/mllm").iterdir()}
    assert "tokenizer.json" in processor_files
    assert not any(name.endswith(".safetensors") for name in processor_files)


@pytest.mark.parametrize("stage", ["connector", "vae_encoder", "vae_decoder", "dit"])
def test_stage_runner_from_a_version_folder_equals_the_torch_runner(repo, tiny_weights, stage):
    reference = torch_runners(load_models(tiny_weights))[stage]
    served = load_stage_runner(repo / stage / "1", stage)
    # the stage's last check case (the decoder's: a later chunk, with random states)
    inputs = get_stage(stage).sample_inputs(TINY, get_stage(stage).cases(TINY)[1][-1])
    # same weights, same module code, same inputs: identical bits, not just close
    for name, value in reference.run(inputs).items():
        torch.testing.assert_close(served.run(inputs)[name], value, rtol=0, atol=0)


def test_copied_weights_are_files_not_links(tiny_weights, tmp_path):
    out = build_repository(None, tmp_path / "copied", tiny_weights,
                           options=RepositoryOptions(copy_weights=True))
    dit = out / "dit/1/dit.safetensors"
    assert dit.is_file() and not dit.is_symlink()
    assert dit.read_bytes() == (tiny_weights / "dit.safetensors").read_bytes()


def _fake_artifacts(root, suffix, stage_manifest):
    # the generator only places files; their content is the exporter's business
    for stage in SPECS:
        stage_manifest(root / stage, TINY, onnx_sha256="0" * 64)
        (root / stage / f"model{suffix}").write_bytes(b"graph " + stage.encode())
    (root / "dit" / "model.onnx.data").write_bytes(b"external weights")
    return root


def test_onnxruntime_backend_places_graphs_and_external_data(tiny_weights, tmp_path,
                                                            stage_manifest):
    artifacts = _fake_artifacts(tmp_path / "onnx", ".onnx", stage_manifest)
    out = build_repository(None, tmp_path / "ort", tiny_weights, artifacts,
                           RepositoryOptions(backend="onnxruntime"))
    config = configs(out)["dit"]
    assert (config.platform, config.backend, config.default_model_filename) == \
        ("onnxruntime_onnx", "onnxruntime", "model.onnx")
    assert (out / "dit/1/model.onnx").read_bytes() == b"graph dit"
    assert (out / "dit/1/model.onnx.data").read_bytes() == b"external weights"
    assert configs(out)["cinema"].backend == "python"  # the orchestrator stays Python


def test_tensorrt_backend_on_gpus(tiny_weights, tmp_path, stage_manifest):
    from tritonclient.grpc import model_config_pb2 as pb

    artifacts = _fake_artifacts(tmp_path / "plans", ".plan", stage_manifest)
    options = RepositoryOptions(backend="tensorrt", version=3,
                                stage_placement=Placement("gpu", count=2, gpus=(0, 1)))
    out = build_repository(None, tmp_path / "trt", tiny_weights, artifacts, options)
    config = configs(out)["vae_decoder"]
    assert config.platform == "tensorrt_plan"
    assert list(config.version_policy.specific.versions) == [3]
    group = config.instance_group[0]
    assert (group.kind, group.count, list(group.gpus)) == \
        (pb.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    assert (out / "vae_decoder/3/model.plan").is_file()


def test_missing_artifacts_name_the_stage_folder(tiny_weights, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"exactly one \*\.onnx file in .*/mllm"):
        build_repository(None, tmp_path / "r", tiny_weights, tmp_path / "empty",
                         RepositoryOptions(backend="onnxruntime"))
    assert not (tmp_path / "r").exists()  # nothing half-written is left behind


def test_existing_folders_are_replaced_only_when_asked(tiny_weights, tmp_path):
    out = build_repository(None, tmp_path / "r", tiny_weights)
    with pytest.raises(ValueError, match="exists and is not empty; pass overwrite"):
        build_repository(None, out, tiny_weights)
    build_repository(None, out, tiny_weights,
                     options=RepositoryOptions(overwrite=True, max_concurrency=3))
    assert configs(out)["cinema"].parameters["max_concurrency"].string_value == "3"
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a cinema model repository"):
        build_repository(None, stranger, tiny_weights, options=RepositoryOptions(overwrite=True))
    assert (stranger / "todo.txt").read_text() == "keep me"


def test_weights_of_another_architecture_are_refused(tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="saved for preset 'tiny'"):
        build_repository(get_preset("small"), tmp_path / "r", tiny_weights)


def test_generated_model_files_point_at_the_package_models(repo):
    from cinema_trt.serving import orchestrator, stage_model

    # the shims only import the package; pb_utils is needed at initialize/execute time
    for folder, module in (("dit/1", stage_model), ("cinema/1", orchestrator)):
        namespace = {}
        exec((repo / folder / "model.py").read_text(), namespace)
        assert namespace["TritonPythonModel"] is module.TritonPythonModel
