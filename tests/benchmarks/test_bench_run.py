"""One real benchmark run on the tiny preset (torch, 2 runs) and the files it writes.

ONNX Runtime variants need the whole preset exported (~70 s for tiny on 2 cores), which
is too slow here; the export cache's reuse rule is tested on one small stage instead.
"""

from __future__ import annotations

import json

import pytest

from cinema_trt.benchmarks.config import BenchConfig
from cinema_trt.benchmarks.latency import run_benchmark
from cinema_trt.benchmarks.machine import source_revision
from cinema_trt.benchmarks.report import write_outputs
from cinema_trt.models.stages import STAGE_NAMES as STAGES

RUNS = 2


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    bench = BenchConfig(preset="tiny", runtimes=("torch",), precisions=("fp32",), runs=RUNS,
                        warmup=1, device="cpu", threads=1,
                        cache_dir=tmp_path_factory.mktemp("cache"))
    return run_benchmark(bench)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    return out, write_outputs(result, out)


def test_every_stage_and_the_pipeline_are_measured_runs_times(result):
    measured = {m.target: m for m in result.measurements}
    assert set(measured) == set(STAGES) | {"pipeline"}
    for m in measured.values():
        assert (m.runtime, m.precision) == ("torch", "fp32")
        assert len(m.samples_ms) == m.stats.count == RUNS
        assert m.stats.min <= m.stats.p50 <= m.stats.max and m.stats.min > 0
    # the request runs 4 dit steps plus every other stage: far slower than one dit step
    assert measured["pipeline"].stats.p50 > measured["dit"].stats.p50


def test_stage_inputs_come_from_the_preset_default_request(result, tiny_config):
    s = tiny_config.sampler
    lframes, lh, lw = (s.frames - 1) // 4 + 1, s.height // 8, s.width // 8
    C = tiny_config.vae.latent_channels
    dit = result.shapes["dit"]
    assert dit["latents"]["shape"] == [2, C, lframes, lh, lw]  # CFG: (cond, uncond)
    assert dit["ref_latents"]["shape"] == [2, 2, C, lh, lw]  # two references
    assert dit["text_states"]["shape"] == [2, tiny_config.dit.text_len, tiny_config.dit.text_dim]
    # one reference a call (models/pipeline.py _encode_references)
    assert result.shapes["vae_encoder"]["video"]["shape"] == [1, 3, 1, s.height, s.width]
    assert result.request["steps"] == s.steps and result.request["frames"] == s.frames


def test_json_record_has_machine_versions_settings_and_every_sample(written, result):
    out, files = written
    record = json.loads(files["json"].read_text())
    for key in ("machine", "versions", "preset", "settings", "shapes", "request", "clock",
                "measurements", "skipped", "notes", "variants", "started", "duration_s",
                "source"):
        assert key in record, key
    # the commit of the code measured (this test runs in a git checkout of it)
    assert record["source"] == source_revision() and len(record["source"]["commit"]) == 40
    assert isinstance(record["source"]["dirty"], bool)
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]
    assert record["versions"]["torch"]
    assert record["settings"]["runs"] == RUNS and record["settings"]["threads"] == 1
    assert record["clock"] == "perf_counter_ns"
    assert {m["target"] for m in record["measurements"]} == set(STAGES) | {"pipeline"}
    assert all(len(m["samples_ms"]) == RUNS for m in record["measurements"])
    assert {(s["runtime"], s["precision"]) for s in record["skipped"]} == set()
    assert files["json"].name.startswith("cpu-") and "-tiny-" in files["json"].name


def test_markdown_has_a_row_per_target_and_the_png_is_an_image(written):
    _, files = written
    text = files["markdown"].read_text()
    for target in STAGES + ("pipeline",):
        assert f"| {target}" in text, target
    assert "| served" not in text  # not requested
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_write_never_overwrites_the_first(written, result):
    out, first = written
    before = first["json"].read_bytes()
    second = write_outputs(result, out)
    assert second["json"] != first["json"] and second["json"].stem.endswith("-2")
    assert first["json"].read_bytes() == before
    assert json.loads(second["json"].read_text()) == json.loads(before)  # same result


def test_interleaved_run_measures_the_same_targets_in_the_same_order(result, tmp_path):
    bench = BenchConfig(preset="tiny", runtimes=("torch",), precisions=("fp32",), runs=1,
                        warmup=0, device="cpu", threads=1, interleave=True,
                        cache_dir=tmp_path)
    interleaved = run_benchmark(bench)
    assert [m.target for m in interleaved.measurements] == [
        m.target for m in result.measurements]
    assert all(m.stats.count == 1 for m in interleaved.measurements)
    assert any("round-robin" in note for note in interleaved.notes)
