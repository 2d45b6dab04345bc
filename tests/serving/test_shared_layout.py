"""The shared layout (serving/layouts.py) without a server: `cinema-trt repo --layout shared`
writes the `cinema` model alone, holding every stage's files, and the runners its process
loads drive the same pipeline to the same video as the in-process one. The served path is
tests/serving/test_shared_serving.py; the TensorRT path (one activation region) is GPU-marked
in tests/engines/test_rtx_gpu.py."""

import shutil

import numpy as np
import pytest

from cinema_trt.models.factory import load_models, read_weights_config, torch_runners
from cinema_trt.models.media import load_image, sample_references
from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import STAGES
from cinema_trt.serving import protocol
from cinema_trt.serving.layouts import SerialRunner, orchestrator_runners
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.triton_config import Placement, parse_config

pytestmark = pytest.mark.usefixtures("serve_extra")

TINY = get_preset("tiny")
SHARED = RepositoryOptions(layout="shared")
PARAMS = dict(frames=5, height=32, width=48, steps=2, guidance=4.0, seed=0)


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.fixture(scope="module")
def repo(tiny_weights, tmp_path_factory):
    return build_repository(TINY, tmp_path_factory.mktemp("shared") / "models", tiny_weights,
                            options=SHARED)


def test_the_repository_holds_the_cinema_model_alone_with_every_stage(repo, tiny_weights):
    assert [p.parent.name for p in repo.glob("*/config.pbtxt")] == [protocol.ORCHESTRATOR]
    config = parse_config((repo / "cinema/config.pbtxt").read_text())
    assert _parameters(config) == {"layout": "shared", "runtime": "torch",
                                   "max_concurrency": str(protocol.MAX_CONCURRENCY)}
    version = repo / "cinema/1"
    for stage in STAGES:  # each stage's weights, linked once (the VAE's serve two stages)
        placed = version / stage.weights_entry
        assert placed.is_symlink()
        assert placed.resolve() == (tiny_weights / stage.weights_entry).resolve()
    assert not (repo / "cinema/warmup").exists()  # the process warms its runners itself


def test_the_cinema_model_takes_the_stage_placement(tiny_weights, tmp_path):
    """Its process runs the stages: on the stage models' GPUs, as many instances."""
    options = RepositoryOptions(layout="shared", stage_placement=Placement.on((0, 1), 2))
    repo = build_repository(TINY, tmp_path / "models", tiny_weights, options=options)
    group = parse_config((repo / "cinema/config.pbtxt").read_text()).instance_group[0]
    assert (list(group.gpus), group.count) == ([0, 1], 2)


def test_the_shared_runners_generate_the_in_process_video(repo, tiny_weights):
    """Loaded by the `cinema` model's loader from its version folder, warmed up, behind one
    lock: the same arithmetic as the in-process pipeline, bit for bit."""
    version = repo / "cinema/1"
    config = read_weights_config(version)
    parameters = _parameters(parse_config((repo / "cinema/config.pbtxt").read_text()))
    runners = orchestrator_runners(config, version, parameters)
    assert sorted(runners) == sorted(s.name for s in STAGES)
    assert all(isinstance(r, SerialRunner) for r in runners.values())
    assert len({id(r.lock) for r in runners.values()}) == 1  # one lock for every stage
    models = load_models(tiny_weights)
    refs = tuple(load_image(p.read_bytes()) for p in sample_references()[:2])
    request = GenerationRequest(prompt="two toys", refs=refs, **PARAMS)
    served = CinemaPipeline(config, runners, models.processor).generate(request)
    local = CinemaPipeline(models.config, torch_runners(models), models.processor
                           ).generate(request)
    np.testing.assert_array_equal(served, local)


def test_a_stage_that_fails_to_load_names_the_stage_and_its_file(tiny_weights, tmp_path):
    options = RepositoryOptions(layout="shared", copy_weights=True)
    repo = build_repository(TINY, tmp_path / "models", tiny_weights, options=options)
    version = repo / "cinema/1"
    (version / "dit.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception, match=r"stage 'dit' failed to load from .*dit\.safetensors"):
        orchestrator_runners(TINY, version, {"layout": "shared", "runtime": "torch"})


def test_per_stage_stays_the_default_and_shared_needs_the_python_backend():
    assert RepositoryOptions().layout is None  # per-stage unless a memory budget chooses
    with pytest.raises(ValueError, match="layout='stacked' must be one of"):
        RepositoryOptions(layout="stacked")
    with pytest.raises(ValueError, match="python-backend cinema model"):
        RepositoryOptions(layout="shared", backend="onnxruntime")


def test_the_cli_writes_the_shared_layout(tiny_weights, tmp_path):
    from cinema_trt.cli.main import main

    out = tmp_path / "repo"
    assert main(["repo", "-o", str(out), "--weights", str(tiny_weights),
                 "--layout", "shared"]) == 0
    assert [p.parent.name for p in out.glob("*/config.pbtxt")] == [protocol.ORCHESTRATOR]
    shutil.rmtree(out)
    assert main(["repo", "-o", str(out), "--weights", str(tiny_weights)]) == 0
    assert len(list(out.glob("*/config.pbtxt"))) == len(STAGES) + 1  # per-stage, as before


def test_the_serving_image_reads_the_shared_repository(repo):
    """serving/deployment.py finds what the image must hold from the configs: the runtime
    is the cinema model's in the shared layout."""
    from cinema_trt.serving.deployment import read_repository

    needs = read_repository(repo)
    assert needs.models == (protocol.ORCHESTRATOR,)
    assert needs.runtimes == frozenset({"torch"}) and needs.gpus == ()
