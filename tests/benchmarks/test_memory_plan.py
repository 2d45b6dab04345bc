"""The memory plan's arithmetic and record (benchmarks/memory_plan.py, memory_report.py).

Numbers here are made up so the expected results can be worked out by hand; the paper-scale
figures come from `cinema-trt memory-plan` (benchmarks/results/*-memory-cinema-*).
"""

from __future__ import annotations

import json

import pytest

from cinema_trt.benchmarks.memory_plan import (
    GIB,
    EngineMemory,
    extrapolate,
    pipeline_peaks,
)

MIB = 2**20


def test_weights_extrapolate_linearly_and_activations_stay_one_blocks_peak():
    # base 100 + 50 per block; one block's activations 1000 at either depth
    measured = {1: EngineMemory(150, 1000, 3), 2: EngineMemory(200, 1000, 4)}
    plan = extrapolate("dit", "fp16", measured, full_depth=42)
    assert plan.full == EngineMemory(weights=100 + 42 * 50, activation=1000, persistent=2 + 42)
    assert plan.growth_share == 0.0


def test_activations_that_grow_with_depth_grow_linearly_on_top_of_the_peak():
    """The bug it catches: a stage with tensors live across every layer (its activations
    do add up per layer) reported at one block's size."""
    measured = {2: EngineMemory(10, 1300), 1: EngineMemory(5, 1000)}
    plan = extrapolate("mllm_text", "fp16", measured, full_depth=28)
    assert plan.full.activation == 1300 + 26 * 300
    assert plan.growth_share == pytest.approx(26 * 300 / (1300 + 26 * 300))


def test_a_deeper_build_needing_less_keeps_the_larger_figure():
    measured = {1: EngineMemory(5, 1000), 2: EngineMemory(10, 990)}
    assert extrapolate("dit", "fp16", measured, full_depth=42).full.activation == 1000


def test_a_whole_build_is_taken_as_it_is():
    plan = extrapolate("vae_decoder", "fp16", {0: EngineMemory(7, 9, 1)}, full_depth=0)
    assert plan.full == EngineMemory(7, 9, 1) and plan.growth_share == 0.0


@pytest.mark.parametrize("measured, full", [({2: EngineMemory(1, 1)}, 42),
                                            ({1: EngineMemory(1, 1), 50: EngineMemory(2, 1)}, 42)])
def test_extrapolation_needs_two_depths_within_the_full_depth(measured, full):
    with pytest.raises(ValueError, match="dit"):
        extrapolate("dit", "fp16", measured, full)


def _stages(**figures):
    """StagePlans of whole builds: stage=(weights GiB, activation GiB)."""
    return [extrapolate(s, "fp16", {0: EngineMemory(int(w * GIB), int(a * GIB))}, 0)
            for s, (w, a) in figures.items()]


FIGURES = dict(mllm_vision=(1, 2), mllm_text=(14, 3), connector=(0.5, 0.5),
               vae_encoder=(0.5, 4), dit=(9, 6), vae_decoder=(0.5, 8))


def test_kept_peak_is_every_weight_plus_the_largest_activation():
    kept, _ = pipeline_peaks("fp16", _stages(**FIGURES))
    assert not kept.release_mllm
    assert kept.peak == int(25.5 * GIB) + 8 * GIB
    assert kept.fits == {"24 GiB": False, "48 GiB": True, "80 GiB": True}


def test_releasing_the_mllm_leaves_the_larger_of_encode_and_denoise():
    _, released = pipeline_peaks("fp16", _stages(**FIGURES))
    # encode: MLLM 15 + connector and VAE encoder 1, largest activation 4 (VAE encoder)
    assert released.phases["encode"] == 16 * GIB + 4 * GIB
    # then: connector, VAE encoder, DiT, VAE decoder 10.5, largest activation 8 (decoder)
    assert released.phases["denoise + decode"] == int(10.5 * GIB) + 8 * GIB
    assert released.peak == 20 * GIB
    assert released.fits["24 GiB"]


def test_a_card_fits_up_to_its_last_byte():
    exact = _stages(dit=(20, 4))
    assert pipeline_peaks("fp16", exact, cards_gib=(24,))[0].fits == {"24 GiB": True}
    over = [extrapolate("dit", "fp16", {0: EngineMemory(24 * GIB + 1, 0)}, 0)]
    assert pipeline_peaks("fp16", over, cards_gib=(24,))[0].fits == {"24 GiB": False}


def test_settings_refuse_fp8_for_targets_without_it_before_any_work(tmp_path):
    from cinema_trt.benchmarks.memory_run import MemoryPlanConfig

    with pytest.raises(ValueError, match="sm89"):
        MemoryPlanConfig(targets=("sm80",), cache_dir=tmp_path)
    assert MemoryPlanConfig(plans=("fp16",), targets=("sm80",)).targets == ("sm80",)
    with pytest.raises(ValueError, match="depths"):
        MemoryPlanConfig(depths=(2, 1))
    with pytest.raises(ValueError, match="depths"):
        MemoryPlanConfig(preset="tiny", depths=(1, 3))  # tiny has 2 layers


def test_reduced_config_keeps_the_width_and_sets_every_depth():
    from cinema_trt.benchmarks.memory_run import CALIBRATION_SAMPLER, at_depth, full_depths
    from cinema_trt.models.presets import get_preset

    cinema = get_preset("cinema")
    reduced = at_depth(cinema, 2)
    assert (reduced.dit.depth, reduced.mllm.num_layers, reduced.mllm.vision_depth) == (2, 2, 2)
    assert (reduced.dit.width, reduced.mllm.hidden_size) == (cinema.dit.width,
                                                             cinema.mllm.hidden_size)
    assert reduced.sampler == CALIBRATION_SAMPLER
    assert full_depths(cinema) == {"dit": 42, "mllm_text": 28, "mllm_vision": 32}


def test_record_files_name_the_machine_versions_and_commit(tmp_path):
    import datetime
    import time

    from cinema_trt.benchmarks.machine import Provenance, machine_info, source_revision
    from cinema_trt.benchmarks.memory_report import make_record, to_markdown, write_outputs
    from cinema_trt.benchmarks.memory_run import MemoryPlanConfig

    stages = _stages(**FIGURES)
    dit = extrapolate("dit", "fp16", {1: EngineMemory(450 * MIB, 2400 * MIB),
                                      2: EngineMemory(830 * MIB, 2400 * MIB)}, 42)
    stages = [dit if s.stage == "dit" else s for s in stages]
    settings = MemoryPlanConfig(plans=("fp16",), cache_dir=tmp_path)
    started = datetime.datetime(2026, 11, 29, 7, tzinfo=datetime.timezone.utc)
    run = Provenance(started, time.perf_counter() - 12.0, source_revision(), machine_info())
    record = make_record(settings, {"fp16": stages}, run.block())
    files = write_outputs(record, tmp_path / "results")
    assert [f.name for f in files.values()] == [
        f"cpu-{record['machine']['cores']}core-memory-cinema-20261129.{x}"
        for x in ("json", "md", "png")]
    saved = json.loads(files["json"].read_text())
    assert saved["schema"] == "cinema-trt/memory-plan/1"
    assert saved["source"]["commit"] and saved["versions"]["tensorrt-rtx-cu12"]
    assert saved["shapes"]["frames"] == 45 and saved["shapes"]["refs"]["max"] == 4
    assert [p["release_mllm"] for p in saved["peaks"]] == [False, True]
    dit_row = next(s for s in saved["plans"]["fp16"] if s["stage"] == "dit")
    assert dit_row["full"]["weights"] == 830 * MIB + 40 * 380 * MIB
    assert saved["references"][0]["measured_weights_gb"] == pytest.approx(830 * MIB / 1e9)
    text = to_markdown(record)
    assert "## Pipeline peak against cards" in text and "| fp16 | kept |" in text
    assert files["chart"].stat().st_size > 0
    # a second run the same day gets its own files
    assert write_outputs(record, tmp_path / "results")["json"].name.endswith("-2.json")


@pytest.mark.slow
def test_tiny_end_to_end_reads_the_builders_figures(tmp_path, require):
    """Exports at two depths, TensorRT-RTX builds, manifest figures -> plan (~1.5 min)."""
    require("tensorrt_rtx", 'pip install -e ".[test]"')
    from cinema_trt.benchmarks.memory_run import MemoryPlanConfig, plan_stages
    from cinema_trt.export.manifest import read_manifest

    settings = MemoryPlanConfig(preset="tiny", plans=("fp16",), cache_dir=tmp_path)
    plans, notes = plan_stages(settings, "fp16")
    stages = {s.stage: s for s in plans}
    assert notes == []
    dit = stages["dit"]
    assert sorted(dit.measured) == [1, 2]
    assert dit.measured[2].weights > dit.measured[1].weights > 0  # a block adds weights
    assert dit.measured[2].activation > 0
    assert sorted(stages["vae_decoder"].measured) == [0]
    engines = tmp_path / "engines-depth2-fp16"
    assert read_manifest(engines / "dit").build.runtime == "tensorrt-rtx"


def test_cli_refuses_fp8_on_sm80_in_one_line_before_exporting(tmp_path, caplog):
    from cinema_trt.cli.main import main

    assert main(["memory-plan", "--targets", "sm80", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "sm89" in caplog.text
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_exports_are_artifact_cache_entries_that_a_second_run_reuses(tiny_config, tmp_path):
    """Each export runs in a spawned worker; the folder the builds read links every stage to
    its entry of the artifact cache (models/cache.py), so a rerun exports nothing."""
    from cinema_trt.benchmarks.memory_run import export_once
    from cinema_trt.export.manifest import read_manifest

    cache, folder = tmp_path / "cache", tmp_path / "onnx-depth1-fp16"
    assert export_once(tiny_config, cache, folder, ("connector",), fp8=False) == folder
    link = folder / "connector"
    assert link.is_symlink() and link.resolve().parent.parent == (cache / "onnx").resolve()
    assert read_manifest(link).compute_dtype == "float16"
    mtime = (link / "manifest.json").stat().st_mtime_ns
    export_once(tiny_config, cache, folder, ("connector",), fp8=False)
    assert (link / "manifest.json").stat().st_mtime_ns == mtime
