"""The served memory plan re-planned from recorded builder figures (benchmarks/
memory_served.py, memory_served_report.py, `cinema-trt memory-plan --from-record`): the
records committed in benchmarks/results are its input, so these tests read them."""

import json
import shutil

import pytest

from cinema_trt.benchmarks.config import RESULTS_DIR
from cinema_trt.benchmarks.memory_served import (
    engine_variants,
    latest,
    read_records,
    served_plans,
)
from cinema_trt.models.stages import GRAPH_NAMES
from cinema_trt.serving.served_memory import GIB, PER_STAGE, SHARED, served_peak

MEMORY = latest(RESULTS_DIR, "memory-cinema")
CHUNKS = latest(RESULTS_DIR, "vae-chunks")
WEIGHT_ONLY = latest(RESULTS_DIR, "weight-only")


@pytest.fixture(scope="module")
def records():
    return read_records(MEMORY, CHUNKS, WEIGHT_ONLY)


def _full(record, plan, graph):
    return next(s for s in record["plans"][plan] if s["stage"] == graph)["full"]


def test_every_plan_serves_every_graph_once_with_the_records_figures(records):
    plans = served_plans(records)
    assert len(plans) == 2 * 3 * 3 * 2  # DiT x MLLM text x decoder x streamed
    for plan in plans:
        graphs = [g for stage in plan.stages.values() for g in stage]
        assert sorted(graphs) == sorted(GRAPH_NAMES)
        dit = plan.stages["dit"]["dit"]
        assert dit.weights == _full(records.memory, plan.settings["dit"], "dit")["weights"]


def test_quantized_text_weights_keep_the_one_layer_builds_compression(records):
    """The bug it catches: the one-layer INT4/INT8 build taken as the full-depth figure, or
    scaled without the layer count."""
    builds = records.weight_only["rtx_builds_paper_width_1_layer"]
    text = engine_variants(records)["mllm_text"]
    for precision, build in (("int4", "int4 rtn_dq"), ("int8", "int8")):
        measured = builds[build]["weights_bytes"] / builds["fp16"]["weights_bytes"]
        assert text[precision].weights / text["fp16"].weights == pytest.approx(measured,
                                                                              rel=1e-3)


def test_the_chunked_decoder_holds_its_state_and_a_chunk_not_the_whole_video(records):
    decoder = engine_variants(records)["vae_decoder"]
    one_shot, chunks = decoder["one-shot"], decoder["chunks of 1 latent frame"]
    assert one_shot.state == 0
    assert chunks.state == pytest.approx(records.chunks["state_at_paper_shape"]
                                         ["video float16 GiB"] * GIB, abs=1)
    assert chunks.io < one_shot.io / 10  # 4 frames of 45


def test_sharing_one_process_saves_contexts_and_activation_regions(records):
    for plan in served_plans(records):
        per_stage, shared = (served_peak(plan, layout) for layout in (PER_STAGE, SHARED))
        assert shared.peak < per_stage.peak
        assert shared.parts["weights"] == per_stage.parts["weights"]


def test_records_of_different_models_are_refused(records, tmp_path):
    changed = json.loads(WEIGHT_ONLY.read_text())
    changed["rtx_builds_paper_width_1_layer"]["fp16"]["weights_bytes"] += 1
    other = tmp_path / "weight-only.json"
    other.write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="records of different models"):
        read_records(MEMORY, CHUNKS, other)


def test_a_record_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="expected 'cinema-trt/memory-plan/1'"):
        read_records(CHUNKS, CHUNKS, WEIGHT_ONLY)


def test_cli_replans_from_records_without_building(tmp_path):
    """Writes JSON + md + PNG naming the records and their commits, and the commit of the
    arithmetic (the one provenance block, benchmarks/machine.py)."""
    from cinema_trt.cli.main import main

    folder = tmp_path / "records"
    folder.mkdir()
    for record in (MEMORY, CHUNKS, WEIGHT_ONLY):
        shutil.copy(record, folder / record.name)
    out = tmp_path / "out"
    assert main(["memory-plan", "--from-record", str(folder / MEMORY.name), "--out", str(out),
                 "--cuda-context-gib", "0.25"]) == 0
    files = sorted(p.suffix for p in out.iterdir())
    assert files == [".json", ".md", ".png"]
    saved = json.loads(next(out.glob("*.json")).read_text())
    assert saved["schema"] == "cinema-trt/memory-served/2"
    assert saved["source"]["commit"]  # this re-plan's code
    assert saved["sources"]["memory"]["commit"] == json.loads(MEMORY.read_text())["source"][
        "commit"]
    assert saved["assumptions"]["cuda_context"] == GIB // 4
    assert set(saved["choices"]) == {f"{c} GiB" for c in (16, 24, 32, 48, 80)}
    text = next(out.glob("*.md")).read_text()
    assert "## Which card runs which plan" in text and "0.25 GiB (assumed)" in text
