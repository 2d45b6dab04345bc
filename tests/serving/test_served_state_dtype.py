"""An fp16 VAE decoder served: its chunk state crosses in fp16 (the graph's compute dtype,
`Stage.exported_spec`), not float32, in both layouts.

Per-stage, the state leaves the decoder model and comes back through the orchestrator on
every chunk: config.pbtxt, the warm-up request and the orchestrator's BLS specs must all
say fp16, or 3.0 GiB a copy crosses instead of 1.5 at 45x480x720 (the bug these tests
catch; before, the stage model cast float32 states to fp16 on every call). Shared, the
runners warm up in-process with the graph's own types (float32 zeros fail an fp16 graph's
input check).
"""

import json

import numpy as np
import pytest

from cinema_trt.export.ort import ort_runners
from cinema_trt.models.factory import pipeline_processor
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import STAGES, VAE_DECODER
from cinema_trt.serving.layouts import COMPUTE_PARAMETER, shared_runners
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.triton_config import parse_config

pytestmark = pytest.mark.slow

TINY = get_preset("tiny")
PROMPT = "two toys dance in the park"
PARAMS = dict(frames=9, height=32, width=48, steps=2, guidance=4.0, seed=0)


@pytest.fixture(scope="module")
def export(tiny_exports, fp32_export, tmp_path_factory):
    """Every stage of the fp32 export but the decoder, exported in fp16."""
    pytest.importorskip("tritonclient.grpc", reason="configs need the serve extra")
    half, _ = tiny_exports.folder([VAE_DECODER.name], dtype="fp16")
    mixed = tmp_path_factory.mktemp("fp16_decoder")
    for folder in fp32_export[0].iterdir():
        source = half / VAE_DECODER.name if folder.name == VAE_DECODER.name else folder
        (mixed / folder.name).symlink_to(source)
    return mixed


@pytest.fixture(scope="module")
def repo(export, tiny_weights, tmp_path_factory):
    return build_repository(None, tmp_path_factory.mktemp("fp16_state") / "models",
                            tiny_weights, export, RepositoryOptions(runtime="ort"))


def _types(entries) -> dict[str, str]:
    from cinema_trt.serving.triton_config import model_config_pb2

    names = model_config_pb2().DataType.Name
    return {e.name: names(e.data_type) for e in entries}


def test_the_decoder_model_declares_its_states_in_fp16(repo):
    config = parse_config((repo / VAE_DECODER.name / "config.pbtxt").read_text())
    inputs, outputs = _types(config.input), _types(config.output)
    assert (inputs.pop("latents"), inputs.pop("first"), outputs.pop("video")) == \
        ("TYPE_FP32", "TYPE_BOOL", "TYPE_FP32")
    assert set(inputs.values()) == set(outputs.values()) == {"TYPE_FP16"}
    (warmup,) = config.model_warmup
    assert {warmup.inputs[n].data_type for n in inputs} == {config.input[2].data_type}


def test_the_orchestrator_calls_the_decoder_with_fp16_states(repo):
    config = parse_config((repo / "cinema" / "config.pbtxt").read_text())
    computes = json.loads(config.parameters[COMPUTE_PARAMETER].string_value)
    assert computes == {VAE_DECODER.name: "float16"}


def _video(runners, tiny_weights):
    pipeline = CinemaPipeline(TINY, runners, pipeline_processor(TINY, tiny_weights))
    refs = tuple(load_image(p.read_bytes()) for p in sample_references()[:2])
    return pipeline.generate(GenerationRequest(prompt=PROMPT, refs=refs, **PARAMS))


def test_the_shared_layout_warms_up_and_decodes_like_the_export(export, tiny_weights, tmp_path):
    options = RepositoryOptions(runtime="ort", layout="shared")
    repo = build_repository(None, tmp_path / "models", tiny_weights, export, options)
    config = parse_config((repo / "cinema" / "config.pbtxt").read_text())
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    runners = shared_runners(TINY, repo / "cinema" / "1", parameters)
    assert set(runners) == {s.name for s in STAGES}
    np.testing.assert_array_equal(_video(runners, tiny_weights),
                                  _video(ort_runners(export, ("CPUExecutionProvider",)),
                                         tiny_weights))


@pytest.mark.server
def test_a_served_fp16_decoder_makes_the_in_process_video(repo, export, tiny_weights,
                                                          tritonserver_binary):
    from cinema_trt.serving.client import CinemaClient
    from cinema_trt.serving.server import ServerConfig, TritonServer

    with TritonServer(ServerConfig(repo, startup_timeout=240)) as server:
        video = CinemaClient(server.endpoints.grpc).generate(PROMPT, sample_references()[:2],
                                                             **PARAMS)
    np.testing.assert_array_equal(video, _video(ort_runners(export, ("CPUExecutionProvider",)),
                                                tiny_weights))
