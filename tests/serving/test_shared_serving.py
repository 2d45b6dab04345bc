"""A real Triton server on the tiny repository in the shared layout (serving/layouts.py),
runtime ort: the `cinema` model alone, running the exported graphs on ONNX Runtime in its
own process, driven over gRPC like a user would.

The video is compared with the in-process pipeline on the same export (ort_runners): the
same graphs, the same ONNX Runtime, the same sampler code, so bit-identical.
"""

import logging

import numpy as np
import pytest

from cinema_trt.export.ort import ort_runners
from cinema_trt.models.factory import pipeline_processor
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import STAGES
from cinema_trt.serving.client import CinemaClient
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.server import ServerConfig, ServerError, TritonServer

pytestmark = [pytest.mark.server, pytest.mark.slow]

TINY = get_preset("tiny")
SHARED_ORT = RepositoryOptions(runtime="ort", layout="shared")
PROMPT = "two toys dance in the park"
PARAMS = dict(frames=5, height=32, width=48, steps=2, guidance=4.0, seed=0)
STREAMED = {**PARAMS, "frames": 33}  # 9 latent frames: 9 chunks (test_serving_e2e.py)


class _Lines(logging.Handler):
    """The server's log lines (stub output included), all of them, in order."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def ref_paths():
    return sample_references()[:2]


@pytest.fixture(scope="module")
def export(fp32_export):
    return fp32_export[0]


@pytest.fixture(scope="module")
def served(tritonserver_binary, tiny_weights, export, tmp_path_factory):
    """(server, its log lines from the start)."""
    repo = build_repository(None, tmp_path_factory.mktemp("shared") / "models", tiny_weights,
                            export, SHARED_ORT)
    lines = _Lines()
    server_log = logging.getLogger("cinema_trt.serving.tritonserver")
    server_log.addHandler(lines)
    server_log.setLevel(logging.DEBUG)
    try:
        with TritonServer(ServerConfig(repo, startup_timeout=240)) as running:
            yield running, lines.lines
    finally:
        server_log.removeHandler(lines)


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def client(server):
    return CinemaClient(server.endpoints.grpc)


def _local(export, tiny_weights, ref_paths, params):
    pipeline = CinemaPipeline(TINY, ort_runners(export, ("CPUExecutionProvider",)),
                              pipeline_processor(TINY, tiny_weights))
    refs = tuple(load_image(p.read_bytes()) for p in ref_paths)
    return pipeline.generate(GenerationRequest(prompt=PROMPT, refs=refs, **params))


def test_the_repository_index_shows_the_cinema_model_alone(server):
    import tritonclient.grpc as grpcclient

    triton = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        index = triton.get_model_repository_index(headers=server.admin_headers)
        assert [(m.name, m.state) for m in index.models] == [("cinema", "READY")]
    finally:
        triton.close()


def test_the_served_video_equals_the_in_process_pipeline_on_the_export(client, export,
                                                                       tiny_weights, ref_paths):
    video = client.generate(PROMPT, ref_paths, **PARAMS)
    assert video.shape == (5, 32, 48, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, _local(export, tiny_weights, ref_paths, PARAMS))


def test_frames_stream_chunk_by_chunk_and_make_the_same_video(client, export, tiny_weights,
                                                              ref_paths):
    starts = []
    result = client.stream(PROMPT, ref_paths, on_frames=lambda c: starts.append(c.start),
                           **STREAMED)
    assert starts == [0, *range(1, 33, 4)]  # one response per decoded chunk, in order
    assert result.streamed == 33
    np.testing.assert_array_equal(result.video, _local(export, tiny_weights, ref_paths,
                                                       STREAMED))


def test_the_model_turned_ready_only_after_every_runner_loaded_and_warmed(served):
    """The bug it catches: runners loaded lazily or in the background, so a balancer routes
    requests to a replica whose stages are not there yet."""
    _, lines = served
    loaded = next(i for i, line in enumerate(lines) if "successfully loaded 'cinema'" in line)
    for stage in STAGES:
        warmed = next(i for i, line in enumerate(lines)
                      if f"stage {stage.name} warmed up" in line)
        assert warmed < loaded, (stage.name, lines[warmed], lines[loaded])


def test_a_stage_that_fails_to_load_fails_the_start_naming_stage_and_file(
        tritonserver_binary, tiny_weights, export, tmp_path):
    options = RepositoryOptions(runtime="ort", layout="shared", copy_weights=True)
    repo = build_repository(None, tmp_path / "models", tiny_weights, export, options)
    graph = repo / "cinema/1/onnx/dit/model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")  # no longer what its manifest hashed
    with pytest.raises(ServerError) as error:
        TritonServer(ServerConfig(repo, startup_timeout=120)).start()
    assert "stage 'dit' failed to load from" in str(error.value)
    assert "onnx/dit" in str(error.value)


def test_two_concurrent_requests_interleave_and_each_gets_its_own_video(client, export,
                                                                        tiny_weights,
                                                                        ref_paths):
    """One lock serialises the stage calls, not the requests: both finish, each with the
    video of its own seed (the bug it catches: a request's tensors mixed into the other's
    through a runner shared without the lock, or a deadlock)."""
    import threading

    videos = {}

    def generate(seed):
        videos[seed] = client.generate(PROMPT, ref_paths, **{**PARAMS, "seed": seed})

    threads = [threading.Thread(target=generate, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(videos) == [1, 2]
    for seed, video in videos.items():
        np.testing.assert_array_equal(
            video, _local(export, tiny_weights, ref_paths, {**PARAMS, "seed": seed}))
