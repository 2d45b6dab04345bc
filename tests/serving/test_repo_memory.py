"""`cinema-trt repo --memory-budget / --weight-streaming-budget` (serving/repo_memory.py,
serving/repo.py): the repository prices the engines it serves from their manifests' builder
figures, sets what it can (a streamable DiT's budget, in the stage model's config) and
refuses what it cannot change, before writing anything. The engine folders here are
manifests with made-up builder figures (the arithmetic is checked by hand); no plan runs."""

import dataclasses
import json

import pytest

from cinema_trt.engines.manifest import profiles_to_json
from cinema_trt.engines.shapes import default_shapes, profiles_for
from cinema_trt.export.manifest import BuildRecord, read_manifest, write_manifest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import GRAPHS, STAGES
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.repo_memory import MemoryBudgetError, MemoryRequest, plan_memory
from cinema_trt.serving.served_memory import GIB, Assumptions
from cinema_trt.serving.stage_model import load_stage_runner, parse_budgets
from cinema_trt.serving.triton_config import Placement, parse_config

pytestmark = pytest.mark.usefixtures("serve_extra")

TINY = get_preset("tiny")
# tiny's DiT has 2 blocks, so streaming could keep no fewer than both resident
# (served_memory.STREAM_BLOCKS); the plans below price the same engines as 10 blocks
DEEP = dataclasses.replace(TINY, dit=dataclasses.replace(TINY.dit, depth=10))
CONTEXT = GIB // 2
# weights, activation (GiB) per graph; the DiT dominates
FIGURES = {"mllm_vision": (1, 1), "mllm_text": (2, 1), "connector": (0.5, 0.5),
           "vae_encoder": (0.5, 2), "dit": (10, 3), "vae_decoder": (0.5, 4)}
# per stage process: weights + largest activation of its graphs + a context
RESIDENT = ((1 + 2) + 1) + (0.5 + 0.5) + (0.5 + 2) + (10 + 3) + (0.5 + 4) + 5 * 0.5


def _engines(root, stage_manifest, streaming=()):
    """Build folders for every graph of tiny: a manifest with a build record whose report
    holds the builder's memory figures (FIGURES)."""
    shapes = default_shapes(TINY)
    for graph in GRAPHS:
        manifest = stage_manifest(root / graph.name, TINY, stage=graph.name)
        weights, activation = FIGURES[graph.name]
        build = BuildRecord(
            runtime="tensorrt-rtx", runtime_version="1.7.1", precision="fp16",
            build_config={"weight_streaming": graph.name in streaming},
            profiles=profiles_to_json(profiles_for(graph.spec(TINY), shapes, TINY)),
            onnx_path="x/model.onnx", plan_file="model.plan", plan_sha256="0" * 64,
            cache_key="k", rebuild_command=f"cinema-trt build --onnx x --out {root}",
            report={"memory": {"weights_bytes": int(weights * GIB),
                               "activation_bytes": int(activation * GIB)}})
        write_manifest(dataclasses.replace(manifest, build=build), root / graph.name)
        (root / graph.name / "model.plan").write_bytes(b"plan")
    return root


def _request(budget_gib=None, streaming_gib=None):
    to_bytes = lambda g: None if g is None else int(g * GIB)  # noqa: E731
    return MemoryRequest(to_bytes(budget_gib), to_bytes(streaming_gib), Assumptions(CONTEXT))


def test_engines_that_fit_are_served_as_they_are(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    assert plan_memory(engines, TINY, _request(RESIDENT + 0.1)) == {}


def test_a_streamable_dit_gets_the_room_the_other_stages_leave(tmp_path, stage_manifest):
    """The bug it catches: the budget set to the card's size (or the DiT's share of it)
    rather than what every other process leaves it."""
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    budgets = plan_memory(engines, DEEP, _request(20))
    # the others and the DiT's activation and context take RESIDENT - 10 GiB; I/O buffers
    # of the tiny preset are a few MiB on top
    assert list(budgets) == ["dit"]
    assert 20 - (RESIDENT - 10) - 0.01 < budgets["dit"] / GIB < 20 - (RESIDENT - 10)


def test_engines_that_cannot_fit_are_refused_with_their_table(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest)  # nothing streams
    with pytest.raises(MemoryBudgetError) as error:
        plan_memory(engines, TINY, _request(20))
    text = str(error.value)
    assert RESIDENT == 27.5 and "engines need 27.5" in text  # the figure, stated
    assert "| 16 GiB | 24 GiB | 32 GiB | 48 GiB | 80 GiB |" in text
    assert "| no | no | fits | fits | fits |" in text
    assert "cannot change an engine" in text
    # the DiT's own rebuild command, with what would let the repository fit it
    assert f"cinema-trt build --onnx x --out {tmp_path} --weight-streaming" in text
    assert "cinema-trt build --precision fp8 --stages dit" in text
    # the MLLM's text weights in INT4: the export that makes them, then its build
    assert ("cinema-trt export --dtype fp16 --weight-only int4 --stages mllm_text, then "
            "cinema-trt build --precision fp16 --runtime tensorrt-rtx --stages mllm_text"
            ) in text


def test_the_refusal_knows_a_text_engine_with_integer_weights(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest)
    folder = engines / "mllm_text"
    manifest = read_manifest(folder)
    write_manifest(dataclasses.replace(manifest, quantization={"format": "int4"}), folder)
    with pytest.raises(MemoryBudgetError) as error:
        plan_memory(engines, TINY, _request(20))
    assert "(mllm_text has int4 weights already)" in str(error.value)
    assert "--weight-only int4 --stages mllm_text" not in str(error.value)


def test_a_streamed_dit_too_big_even_at_its_minimum_is_refused(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    # the rest takes 17.5 GiB, two blocks of 1 GiB at least
    with pytest.raises(MemoryBudgetError, match="over the memory budget of 19.40 GiB"):
        plan_memory(engines, DEEP, _request(19.4))
    assert plan_memory(engines, DEEP, _request(19.6))["dit"] > 2 * GIB


def test_an_explicit_streaming_budget_needs_an_engine_built_for_it(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest)
    with pytest.raises(ValueError, match=r"(?s)built with weight streaming.*--weight-streaming"):
        plan_memory(engines, TINY, _request(streaming_gib=4))


def test_an_explicit_streaming_budget_must_fit_the_memory_budget(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    assert plan_memory(engines, DEEP, _request(streaming_gib=4)) == {"dit": 4 * GIB}
    assert plan_memory(engines, DEEP, _request(20, 2)) == {"dit": 2 * GIB}
    with pytest.raises(MemoryBudgetError):
        plan_memory(engines, DEEP, _request(20, 3))


def test_repository_writes_the_budget_into_the_dit_model_only(tiny_weights, tmp_path,
                                                               stage_manifest):
    engines = _engines(tmp_path / "engines", stage_manifest, streaming=("dit",))
    export = tmp_path / "onnx"
    for stage in STAGES:  # a split stage's glue, from its export
        if stage.glue:
            (export / stage.glue).mkdir(parents=True)
            (export / stage.glue / "model.onnx").write_bytes(b"glue")
            stage_manifest(export / stage.glue, TINY, stage=stage.glue)
    options = RepositoryOptions(runtime="tensorrt", stage_placement=Placement.on((0,), 1),
                                memory=_request(streaming_gib=4))
    out = build_repository(TINY, tmp_path / "repo", tiny_weights, engines, options,
                           export_dir=export)
    configs = {p.parent.name: parse_config(p.read_text()) for p in out.glob("*/config.pbtxt")}
    written = {name: c.parameters["weight_streaming_budget"].string_value
               for name, c in configs.items() if "weight_streaming_budget" in c.parameters}
    assert list(written) == ["dit"]
    assert parse_budgets(written["dit"]) == {"dit": 4 * GIB}
    assert read_manifest(out / "dit/1/engines/dit").build is not None


def test_a_budget_for_stages_without_engines_is_refused_before_writing(tiny_weights, tmp_path):
    options = RepositoryOptions(memory=_request(24))  # runtime torch
    with pytest.raises(MemoryBudgetError, match="runtime tensorrt"):
        build_repository(TINY, tmp_path / "repo", tiny_weights, options=options)
    assert not any(tmp_path.glob("*repo*"))


def test_stage_models_take_streaming_budgets_only_on_tensorrt(repo_folder_of_dit):
    with pytest.raises(ValueError, match="for runtime tensorrt, not torch"):
        load_stage_runner(repo_folder_of_dit, "dit", "cpu", "torch", {"dit": GIB})


@pytest.fixture
def repo_folder_of_dit(tiny_weights, tmp_path):
    out = build_repository(TINY, tmp_path / "repo", tiny_weights)
    return out / "dit" / "1"


def test_cli_refuses_with_the_recorded_cards_table(tiny_weights, tmp_path, caplog):
    from cinema_trt.cli.main import main

    assert main(["repo", "-o", str(tmp_path / "repo"), "--weights", str(tiny_weights),
                 "--memory-budget", "24GiB"]) == 2
    assert "runtime tensorrt" in caplog.text
    assert "the plan each card runs" in caplog.text and "| 24 GiB |" in caplog.text
    assert not (tmp_path / "repo").exists()


def test_parse_budgets_reads_what_the_repository_writes():
    assert parse_budgets(json.dumps({"dit": 3 * GIB})) == {"dit": 3 * GIB}
