"""`run_demo` / `cinema-trt demo`: from an empty work dir to a served video and a latency
table, then the same again reusing every artifact.

The first run exports the tiny preset (~55 s on 2 cores) and starts a server (~35 s); the
second run reuses every artifact-cache entry (models/cache.py, whose rules
tests/models/test_cache.py specifies) and only starts the server again. While the second
run's server is up, it also answers the check that runtime-ort stage models (the demo's
repository) reproduce the in-process ONNX Runtime pipeline bit for bit: one server start
for both.
"""

from dataclasses import replace

import numpy as np
import pytest

from cinema_trt.engines.deps import unusable
from cinema_trt.export.manifest import read_manifest
from cinema_trt.export.ort import ort_runners
from cinema_trt.models.backends import TENSORRT
from cinema_trt.models.factory import pipeline_processor
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import STAGE_NAMES as STAGES
from cinema_trt.serving.client import CinemaClient
from cinema_trt.serving.demo import DemoOptions, run_demo
from cinema_trt.serving.latency import format_latency_table

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.usefixtures("serve_extra")]

SIZE = dict(frames=5, height=32, width=48, steps=2)
PROMPT = "two toys dance in the park"
PARAMS = dict(frames=5, height=32, width=48, steps=2, guidance=4.0, seed=0)


def manifest_mtimes(workdir):
    """The export's manifests: <workdir>/onnx/<key>/<stage>/manifest.json."""
    return {p.relative_to(workdir): p.stat().st_mtime_ns
            for p in sorted(workdir.glob("*/*/*/manifest.json"))}


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    # a fresh machine: the demo's own export is under test here, so it does not start from
    # the session's shared one (tests/conftest.py)
    workdir = tmp_path_factory.mktemp("tiny-demo-work")
    return DemoOptions(workdir=workdir, output=tmp_path_factory.mktemp("demo") / "demo.mp4",
                       progress=False, runtime="ort", **SIZE)


@pytest.fixture(scope="module")
def first(tritonserver_binary, options):
    result = run_demo(options)
    return result, manifest_mtimes(options.workdir)


@pytest.fixture(scope="module")
def second(first, options):
    """The second run, and a raw-frames request to its server while it is up."""
    served = {}

    def report(result):
        served["video"] = CinemaClient(result.grpc).generate(PROMPT, sample_references()[:2],
                                                             **PARAMS)

    return run_demo(options, report=report), served["video"]


def test_a_fresh_run_builds_every_step_and_writes_the_requested_video(first, options,
                                                                     read_video):
    result, mtimes = first
    assert result.artifacts.reused == {"weights": False, "onnx": False, "models": False}
    assert result.artifacts.runtime == "ort" and result.output == options.output
    assert read_video(result.output).shape == (5, 32, 48, 3)
    # the frames were streamed: 5 frames are 2 latent frames, decoded (and sent) one at a
    # time, so the first frames came before the request ended
    assert 0 < result.first_frame_seconds < result.request_seconds
    # six graphs: the MLLM is exported as vision + text; fp32 for ONNX Runtime on the CPU
    assert len(mtimes) == 6
    assert {read_manifest(p).compute_dtype for p in result.artifacts.onnx.iterdir()
            if (p / "manifest.json").is_file()} == {"float32"}


def test_the_latency_table_covers_every_stage(first):
    result, _ = first
    assert [row.model for row in result.latency] == list(STAGES)
    calls = {row.model: row.calls for row in result.latency}
    assert calls["dit"] == SIZE["steps"]  # one CFG-batched DiT call per denoising step
    assert all(n >= 1 for n in calls.values())
    assert all(row.compute_ms > 0 and row.total_ms >= row.compute_ms for row in result.latency)
    # every stage call happens inside the request, so their server time fits in its wall time
    assert sum(row.total_ms for row in result.latency) < result.request_seconds * 1e3
    table = format_latency_table(result.latency, result.request_seconds)
    assert all(stage in table for stage in STAGES) and "request (client wall time)" in table


def test_the_server_is_stopped_when_the_demo_returns(first):
    result, _ = first
    assert not CinemaClient(result.grpc).is_ready()


def test_a_second_run_reuses_every_artifact_and_still_serves(first, second, options,
                                                             read_video):
    made, mtimes = first
    result, _ = second
    assert result.artifacts.reused == {"weights": True, "onnx": True, "models": True}
    # the same entries: no key changed between the runs
    assert replace(result.artifacts, reused={}) == replace(made.artifacts, reused={})
    assert manifest_mtimes(options.workdir) == mtimes  # the export was not redone
    assert read_video(result.output).shape == (5, 32, 48, 3)
    assert [row.model for row in result.latency] == list(STAGES)


def test_runtime_ort_stages_serve_the_in_process_ort_video_bit_for_bit(second):
    result, video = second
    tiny = get_preset("tiny")
    # the same graphs on the same ORT build (CPU provider, default threads), the same
    # processor files, seed and sampler: BLS, DLPack and the per-stage processes between
    # the stages must not change one bit
    pipeline = CinemaPipeline(
        tiny, ort_runners(result.artifacts.onnx, providers=("CPUExecutionProvider",)),
        pipeline_processor(tiny, result.artifacts.weights))
    refs = tuple(load_image(p) for p in sample_references()[:2])
    local = pipeline.generate(GenerationRequest(prompt=PROMPT, refs=refs, fps=4, **PARAMS))
    assert video.shape == (5, 32, 48, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, local)


def test_bad_options_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="must end in .mp4"):
        DemoOptions(output=tmp_path / "demo.gif")
    with pytest.raises(ValueError, match="runtime='onnx' must be one of"):
        DemoOptions(runtime="onnx")
    with pytest.raises(ValueError, match="height=40 must be a positive multiple of 16"):
        run_demo(DemoOptions(workdir=tmp_path / "work", height=40))
    assert not (tmp_path / "work").exists()


@pytest.mark.gpu
def test_the_tensorrt_path_serves_the_demo(tritonserver_binary, tmp_path, read_video):
    if unusable(TENSORRT.name):
        pytest.skip(unusable(TENSORRT.name))
    result = run_demo(DemoOptions(workdir=tmp_path / "work", progress=False, **SIZE))
    assert result.artifacts.runtime == "tensorrt" and result.artifacts.reused["engines"] is False
    assert read_video(result.output).shape == (5, 32, 48, 3)
    # fp16 graphs built into fp16 engines, strongly typed (TensorRT 10 and 11 alike)
    assert read_manifest(result.artifacts.onnx / "dit").compute_dtype == "float16"
