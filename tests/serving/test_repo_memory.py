"""`cinema-trt repo --memory-budget / --weight-streaming-budget` (serving/repo_memory.py,
serving/repo.py): the repository prices the engines it serves from their manifests' builder
figures, sets what it can (a streamable DiT's budget, in the stage model's config) and
refuses what it cannot change, before writing anything; it takes the per-stage layout where it
fits, else the shared one (every stage in one process: one CUDA context, one activation
region). The engine folders here are manifests with made-up builder figures (the arithmetic
is checked by hand); no plan runs."""

import dataclasses
import json

import pytest

from cinema_trt.engines.manifest import profiles_to_json
from cinema_trt.engines.shapes import default_shapes, profiles_for
from cinema_trt.export.manifest import BuildRecord, read_manifest, write_manifest
from cinema_trt.models.presets import get_preset
from cinema_trt.models.stages import GRAPHS, STAGES
from cinema_trt.serving.repo import RepositoryOptions, build_repository
from cinema_trt.serving.repo_memory import (
    MemoryBudgetError,
    MemoryChoice,
    MemoryRequest,
    plan_memory,
)
from cinema_trt.serving.served_memory import GIB, PER_STAGE, SHARED, Assumptions
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
# one process: every graph's weights + the largest activation (the decoder's) + one context
SHARED_RESIDENT = (1 + 2 + 0.5 + 0.5 + 10 + 0.5) + 4 + 0.5


def _engines(root, stage_manifest, streaming=(), config=TINY):
    """Build folders for every graph of tiny: a manifest with a build record whose report
    holds the builder's memory figures (FIGURES); profiles for `config`'s decoding."""
    shapes = default_shapes(config)
    for graph in GRAPHS:
        manifest = stage_manifest(root / graph.name, config, stage=graph.name)
        weights, activation = FIGURES[graph.name]
        build = BuildRecord(
            runtime="tensorrt-rtx", runtime_version="1.7.1", precision="fp16",
            build_config={"weight_streaming": graph.name in streaming},
            profiles=profiles_to_json(profiles_for(graph.spec(config), shapes, config)),
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
    assert plan_memory(engines, TINY, _request(RESIDENT + 0.1)) == MemoryChoice(PER_STAGE, {})


def test_the_shared_layout_is_chosen_when_only_it_fits(tmp_path, stage_manifest):
    """The bug it catches: a budget that one process fits refused because the per-stage
    layout pays five contexts and five activation regions."""
    engines = _engines(tmp_path, stage_manifest)  # nothing streams
    assert SHARED_RESIDENT == 19 and RESIDENT == 27.5
    # I/O buffers of the tiny preset are a few MiB on top of the figures
    assert plan_memory(engines, TINY, _request(19.1)) == MemoryChoice(SHARED, {})
    assert plan_memory(engines, TINY, _request(27.6)) == MemoryChoice(PER_STAGE, {})
    with pytest.raises(MemoryBudgetError):
        plan_memory(engines, TINY, _request(18.9))


def test_an_explicit_layout_is_kept_or_refused_naming_the_one_that_fits(tmp_path,
                                                                        stage_manifest):
    engines = _engines(tmp_path, stage_manifest)
    assert plan_memory(engines, TINY, _request(27.6), (SHARED,)) == MemoryChoice(SHARED, {})
    with pytest.raises(MemoryBudgetError) as error:
        plan_memory(engines, TINY, _request(20), (PER_STAGE,))
    text = str(error.value)
    assert "--layout per-stage was asked; --layout shared would fit" in text
    # both layouts' rows, whichever was asked
    assert "| per-stage | 27.5 | no | no | fits | fits | fits |" in text
    assert "| shared | 19.0 | no | fits | fits | fits | fits |" in text


def test_a_streamed_dit_in_the_shared_layout_gets_what_one_process_leaves(tmp_path,
                                                                          stage_manifest):
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    # per-stage needs 17.5 GiB besides the DiT's weights and 2 blocks (19.5) at least;
    # shared needs SHARED_RESIDENT - 10 = 9 GiB besides them
    choice = plan_memory(engines, DEEP, _request(16))
    assert choice.layout == SHARED and list(choice.budgets) == ["dit"]
    assert 16 - 9 - 0.01 < choice.budgets["dit"] / GIB < 16 - 9


def test_a_streamable_dit_gets_the_room_the_other_stages_leave(tmp_path, stage_manifest):
    """The bug it catches: the budget set to the card's size (or the DiT's share of it)
    rather than what every other process leaves it."""
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    budgets = plan_memory(engines, DEEP, _request(20), (PER_STAGE,)).budgets
    # the others and the DiT's activation and context take RESIDENT - 10 GiB; I/O buffers
    # of the tiny preset are a few MiB on top
    assert list(budgets) == ["dit"]
    assert 20 - (RESIDENT - 10) - 0.01 < budgets["dit"] / GIB < 20 - (RESIDENT - 10)


def test_engines_that_cannot_fit_are_refused_with_their_table(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest)  # nothing streams
    with pytest.raises(MemoryBudgetError) as error:
        plan_memory(engines, TINY, _request(18))
    text = str(error.value)
    # the figures of both layouts, stated
    assert "- per-stage (one process per stage model, 5 processes): 27.5" in text
    assert "- shared (every stage in the cinema model's process, one activation region, " \
        "1 process): 19.0" in text
    assert "| 16 GiB | 24 GiB | 32 GiB | 48 GiB | 80 GiB |" in text
    assert "| per-stage | 27.5 | no | no | fits | fits | fits |" in text
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
        plan_memory(engines, TINY, _request(18))
    assert "(mllm_text has int4 weights already)" in str(error.value)
    assert "--weight-only int4 --stages mllm_text" not in str(error.value)


def test_a_streamed_dit_too_big_even_at_its_minimum_is_refused(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    # the rest takes 17.5 GiB, two blocks of 1 GiB at least
    with pytest.raises(MemoryBudgetError, match="the memory budget of 19.40 GiB"):
        plan_memory(engines, DEEP, _request(19.4), (PER_STAGE,))
    assert plan_memory(engines, DEEP, _request(19.6), (PER_STAGE,)).budgets["dit"] > 2 * GIB


def test_an_explicit_streaming_budget_needs_an_engine_built_for_it(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest)
    with pytest.raises(ValueError, match=r"(?s)built with weight streaming.*--weight-streaming"):
        plan_memory(engines, TINY, _request(streaming_gib=4))


def test_an_explicit_streaming_budget_must_fit_the_memory_budget(tmp_path, stage_manifest):
    engines = _engines(tmp_path, stage_manifest, streaming=("dit",))
    assert plan_memory(engines, DEEP, _request(streaming_gib=4)) == \
        MemoryChoice(PER_STAGE, {"dit": 4 * GIB})
    assert plan_memory(engines, DEEP, _request(20, 2), (PER_STAGE,)).budgets == {"dit": 2 * GIB}
    with pytest.raises(MemoryBudgetError):
        plan_memory(engines, DEEP, _request(20, 3), (PER_STAGE,))
    # one process leaves the DiT more: 20 - 9 GiB
    assert plan_memory(engines, DEEP, _request(20, 3)) == MemoryChoice(SHARED, {"dit": 3 * GIB})


def test_a_decoder_built_for_tiles_is_priced_at_its_tile(tmp_path, stage_manifest):
    """A tile-profile decoder's figures are its manifest's (the builder's, at the tile) and
    its I/O buffers a tile's: tiny's 64x64 frame is 8x8 latents, a 4x4 tile a quarter of it,
    so every tensor but the 1-byte `first` is a quarter. The bug it catches: I/O priced at
    the whole frame (the sampler's size) for an engine that takes one tile."""
    from cinema_trt.engines.shapes import request_at
    from cinema_trt.models.presets import Decoding
    from cinema_trt.models.specs import tensor_bytes
    from cinema_trt.models.stages import VAE_DECODER
    from cinema_trt.serving.repo_memory import deployment_plan

    tiled = Decoding(tile=4, overlap=2).apply(TINY)
    decoder = VAE_DECODER.name
    tile = deployment_plan(_engines(tmp_path / "tiles", stage_manifest, config=tiled),
                           tiled).stages[decoder][decoder]
    whole = deployment_plan(_engines(tmp_path / "whole", stage_manifest),
                            TINY).stages[decoder][decoder]
    assert tile.activation == int(FIGURES[decoder][1] * GIB)  # the manifest's
    spec = VAE_DECODER.spec(tiled)
    values = VAE_DECODER.symbols(request_at(default_shapes(tiled), tiled, "max"), tiled)
    assert values["lheight"] == values["lwidth"] == 4
    first = 1  # the bool flag, the same at any size
    assert tile.io == tensor_bytes((*spec.inputs, *spec.outputs), values)
    assert (tile.io - first) * 4 == whole.io - first


def test_an_engine_built_for_other_decoding_is_refused_naming_both_fixes(
        tiny_weights, tmp_path, stage_manifest):
    """A repository whose decoding the decoder engine's profile does not take (untiled
    calls to a tile engine, or the reverse) fails before serving it, with the decoding the
    engine was built for and the rebuild for the asked one."""
    from cinema_trt.models.presets import Decoding

    tiled = Decoding(tile=4, overlap=2).apply(TINY)
    engines = _engines(tmp_path / "engines", stage_manifest, config=tiled)
    decoder = engines / "vae_decoder"  # as `build --decode-tile 4 --decode-overlap 2` writes
    manifest = read_manifest(decoder)
    write_manifest(dataclasses.replace(manifest, build=dataclasses.replace(
        manifest.build, rebuild_command="cinema-trt build --onnx x --out e --precision fp16 "
                                        "--decode-tile 4 --decode-overlap 2")), decoder)
    export = tmp_path / "onnx"
    for stage in STAGES:  # a split stage's glue, from its export
        if stage.glue:
            (export / stage.glue).mkdir(parents=True)
            (export / stage.glue / "model.onnx").write_bytes(b"glue")
            stage_manifest(export / stage.glue, TINY, stage=stage.glue)
    options = RepositoryOptions(runtime="tensorrt", stage_placement=Placement.on((0,), 1))
    with pytest.raises(ValueError, match=r"(?s)input 'latents' dim 3 \(lheight\) is 8.*"
                                         r"built for decoding --decode-chunk 1 --decode-tile 4 "
                                         r"--decode-overlap 2.*decodes with --decode-chunk 1 "
                                         r"--decode-tile 0.*rebuild it for this one: "
                                         r"cinema-trt build --onnx x --out e --precision "
                                         r"fp16 --decode-chunk 1 --decode-tile 0$"):
        build_repository(TINY, tmp_path / "repo", tiny_weights, engines, options,
                         export_dir=export)
    assert not (tmp_path / "repo").exists()
    served = build_repository(TINY, tmp_path / "repo", tiny_weights, engines,
                              dataclasses.replace(options, decoding=Decoding(tile=4, overlap=2)),
                              export_dir=export)
    assert (served / "vae_decoder" / "1" / "engines" / "vae_decoder").is_dir()


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


def test_a_budget_only_one_process_fits_writes_the_shared_layout(tiny_weights, tmp_path,
                                                                 stage_manifest):
    engines = _engines(tmp_path / "engines", stage_manifest)
    export = tmp_path / "onnx"
    for stage in STAGES:  # a split stage's glue, from its export
        if stage.glue:
            (export / stage.glue).mkdir(parents=True)
            (export / stage.glue / "model.onnx").write_bytes(b"glue")
            stage_manifest(export / stage.glue, TINY, stage=stage.glue)
    options = RepositoryOptions(runtime="tensorrt", stage_placement=Placement.on((0,), 1),
                                memory=_request(20))  # per-stage 27.5 GiB, shared 19
    out = build_repository(TINY, tmp_path / "repo", tiny_weights, engines, options,
                           export_dir=export)
    assert [p.parent.name for p in out.glob("*/config.pbtxt")] == ["cinema"]
    config = parse_config((out / "cinema/config.pbtxt").read_text())
    assert config.parameters["layout"].string_value == "shared"
    assert config.parameters["runtime"].string_value == "tensorrt"
    assert list(config.instance_group[0].gpus) == [0]
    for graph in GRAPHS:  # every engine in the one process's folder
        assert read_manifest(out / "cinema/1/engines" / graph.name).build is not None
    # an explicit per-stage layout that does not fit is refused, nothing written
    options = dataclasses.replace(options, layout="per-stage", overwrite=True)
    with pytest.raises(MemoryBudgetError, match="--layout shared would fit"):
        build_repository(TINY, tmp_path / "repo", tiny_weights, engines, options,
                         export_dir=export)
    assert [p.parent.name for p in out.glob("*/config.pbtxt")] == ["cinema"]
