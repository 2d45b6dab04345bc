"""A tiled decoder served: a repository written with a decoding (`cinema-trt repo
--decode-tile 4 --decode-overlap 2`) carries it in the orchestrator's cinema_config.json, and
a real Triton server decodes every chunk tile by tile through BLS, streaming each chunk's
frames as soon as its tiles are blended.

The request: 9 frames of 32x48 (3 latent frames of 4x6), so tiles of 4 latent pixels are 2
per frame (columns 0-3 and 2-5), and the decode is 3 chunks x 2 tiles = 6 decoder calls.
"""

import queue
import time

import numpy as np
import pytest

from cinema_trt.models.factory import load_models, torch_runners
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
from cinema_trt.models.presets import Decoding, Tiling
from cinema_trt.serving.protocol import encode_request, read_chunk
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.server import ServerConfig, TritonServer

pytestmark = [pytest.mark.server, pytest.mark.slow]

PROMPT = "two toys dance in the park"
PARAMS = dict(frames=9, height=32, width=48, steps=2, guidance=4.0, seed=0)
DECODING = Decoding(chunk=1, tile=4, overlap=2)
CHUNKS, TILES = 3, 2
CALLS = CHUNKS * TILES


@pytest.fixture(scope="module")
def ref_paths():
    return sample_references()[:2]


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    return build_repository(None, tmp_path_factory.mktemp("tiles") / "models", tiny_weights,
                            options=RepositoryOptions(decoding=DECODING))


@pytest.fixture(scope="module")
def server(tritonserver_binary, repo):
    with TritonServer(ServerConfig(repo, startup_timeout=240)) as running:
        yield running


@pytest.fixture(scope="module")
def local_tiled(tiny_weights, ref_paths):
    """The in-process pipeline, tiled the same way, on the same weights, refs and seed."""
    models = load_models(tiny_weights)
    config = DECODING.apply(models.config)
    pipeline = CinemaPipeline(config, torch_runners(models), models.processor)
    refs = tuple(load_image(p.read_bytes()) for p in ref_paths)
    return pipeline.generate(GenerationRequest(prompt=PROMPT, refs=refs, **PARAMS))


def test_the_repository_carries_the_decoding_to_the_orchestrator(repo):
    from cinema_trt.models.factory import read_weights_config

    sampler = read_weights_config(repo / "cinema" / "1").sampler
    assert (sampler.decode_chunk, sampler.decode_tiles) == (1, Tiling(4, 2))


def _executions(server, model: str) -> int:
    import tritonclient.grpc as grpcclient

    triton = grpcclient.InferenceServerClient(server.endpoints.grpc)
    try:
        return triton.get_inference_statistics(model).model_stats[0].execution_count
    finally:
        triton.close()


def _settled(server, model: str, expected: int, timeout=20.0) -> int:
    """The model's execution count once it reaches `expected` (statistics lag a response)."""
    deadline = time.monotonic() + timeout
    while (count := _executions(server, model)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def _stream(server, inputs) -> tuple[list, int | None]:
    """(the chunks of one streamed request, decoder calls made when the first arrived)."""
    import tritonclient.grpc as grpcclient

    before = _executions(server, "vae_decoder")
    messages = queue.Queue()
    triton = grpcclient.InferenceServerClient(server.endpoints.grpc)
    triton.start_stream(lambda result, error: messages.put((result, error)))
    triton.async_stream_infer("cinema", inputs, enable_empty_final_response=True)
    chunks, at_first = [], None
    try:
        while True:
            result, error = messages.get(timeout=120)
            assert error is None, error
            chunk = read_chunk(result.as_numpy)
            if chunk is not None:
                if not chunks:
                    at_first = _executions(server, "vae_decoder") - before
                chunks.append(chunk)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        triton.stop_stream()
        triton.close()
    assert _settled(server, "vae_decoder", before + CALLS) - before == CALLS
    return chunks, at_first


def test_tiled_frames_stream_before_the_last_decoder_call_and_equal_the_local_video(
        server, ref_paths, local_tiled):
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, array in encode_request(PROMPT, ref_paths, stream_frames=True,
                                      **PARAMS).items():
        tensor = grpcclient.InferInput(name, list(array.shape),
                                       "BYTES" if array.dtype == object else
                                       grpcclient.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    chunks, at_first = _stream(server, inputs)
    # one response per chunk, all its tiles blended: frame 0, then 4 frames per latent frame
    assert [(c.start, len(c.frames)) for c in chunks] == [(0, 1), (1, 4), (5, 4)]
    # a server that decoded every tile of every chunk before sending would have made all 6
    # calls; a chunk's frames exist after its 2 tiles
    assert at_first is not None and at_first < CALLS, at_first
    # served tiles are the in-process tiled decode, bit for bit (same arithmetic, BLS
    # and DLPack move the tensors unchanged)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), local_tiled)
