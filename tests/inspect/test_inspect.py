"""`cinema-trt inspect`: what an export or engine folder holds, read without running it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytestmark = pytest.mark.slow  # needs the session exports (~2-3 min on 2 cores, once)


@pytest.fixture(scope="module", autouse=True)
def _polygraphy(require):
    require("polygraphy", 'pip install -e ".[test]"')


def _by_stage(reports):
    return {r.stage: r for r in reports}


def test_graph_io_matches_the_stage_specs_with_dynamic_dims_named(fp32_export, tiny_config):
    from cinema_trt.engines.inspect import inspect_path
    from cinema_trt.models.stages import GRAPHS

    reports = _by_stage(inspect_path(fp32_export[0]))
    specs = {g.name: g.spec(tiny_config) for g in GRAPHS}
    assert sorted(reports) == sorted(specs)
    for stage, report in reports.items():
        spec = specs[stage]
        assert [t.name for t in report.inputs] == list(spec.input_names)
        assert [t.name for t in report.outputs] == list(spec.output_names)
        for tensor, spec_tensor in zip(report.inputs, spec.inputs, strict=True):
            assert tensor.dims == spec_tensor.dims  # symbols as the spec names them
            assert tensor.dtype == str(spec_tensor.dtype).removeprefix("torch.")
    dit = reports["dit"]
    assert dit.inputs[0].dynamic == ("batch", "lframes", "lheight", "lwidth")
    assert (dit.precision, dit.compute_dtype, dit.qdq_nodes) == ("fp32", "float32", 0)


def test_attention_blocks_are_counted_per_layer(fp16_export, tiny_config):
    """One attention per DiT block, aligner layer, MLLM text layer and vision block; the
    VAEs have none. The bug it catches: a graph whose attention is decomposed or lost."""
    from cinema_trt.engines.inspect import inspect_path

    reports = _by_stage(inspect_path(fp16_export[0]))
    expected = {"dit": tiny_config.dit.depth, "connector": tiny_config.aligner.depth,
                "mllm_text": tiny_config.mllm.num_layers,
                "mllm_vision": tiny_config.mllm.vision_depth, "vae_encoder": 0,
                "vae_decoder": 0}
    assert {s: r.attention_blocks for s, r in reports.items()} == expected
    assert all((r.precision, r.compute_dtype) == ("fp16", "float16") for r in reports.values())


def test_fp8_graph_shows_its_qdq_and_quantized_linears(fp8_export):
    from cinema_trt.engines.inspect import inspect_path

    report = inspect_path(fp8_export[0] / "dit")[0]
    assert report.precision == "fp8" and report.qdq_types == ("float8e4m3fn",)
    manifest = json.loads((fp8_export[0] / "dit" / "manifest.json").read_text())
    quantized = len(manifest["quantization"]["layers"])
    assert report.quantized_linears == quantized  # one per recipe layer
    # a quantize on each activation and a dequantize on it and on each weight
    assert report.ops["QuantizeLinear"] == quantized
    assert report.ops["DequantizeLinear"] == 2 * quantized
    assert report.qdq_nodes == 3 * quantized


def test_a_bare_model_file_shows_its_weight_types_not_a_precision(fp8_export, fp16_export,
                                                                   tmp_path):
    """Precision and compute dtype are what the exporter recorded; without a manifest the
    graph's initializer types are shown as what they are, and nothing is guessed."""
    from cinema_trt.engines.inspect import format_graph, inspect_path

    shutil.copy(fp8_export[0] / "dit" / "model.onnx", tmp_path / "fp8.onnx")
    shutil.copy(fp16_export[0] / "dit" / "model.onnx", tmp_path / "fp16.onnx")
    fp8, fp16 = inspect_path(tmp_path / "fp8.onnx")[0], inspect_path(tmp_path / "fp16.onnx")[0]
    assert (fp8.stage, fp8.precision, fp8.compute_dtype) == (None, None, None)
    assert fp8.qdq_types == ("float8e4m3fn",) and "float32" in fp8.weight_types
    assert "float16" in fp16.weight_types and fp16.precision is None
    assert "precision: - (no manifest; weights stored as " in format_graph(fp16)


def test_engine_folder_shows_backend_targets_bindings_and_layer_summary(fp16_export, require,
                                                                        tmp_path, capsys,
                                                                        caplog):
    require("tensorrt_rtx", 'pip install -e ".[test]"')
    from cinema_trt.cli.main import main

    out = tmp_path / "engines"
    assert main(["build", "--onnx", str(fp16_export[0]), "--out", str(out), "--runtime",
                 "tensorrt-rtx", "--precision", "fp16", "--stages", "dit",
                 "--targets", "sm89,sm120"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert (report["kind"], report["stage"], report["backend"]) == ("engine", "dit",
                                                                   "tensorrt-rtx")
    assert report["targets"] == ["sm89", "sm120"] and report["precision"] == "fp16"
    assert report["compute_dtype"] == "float16"  # the export's, from the engine's manifest
    assert [b["name"] for b in report["inputs"]] == ["latents", "timestep", "text_states",
                                                     "ref_latents"]
    assert report["plan_bytes"] > 0
    assert report["report"]["attention"]["onnx"] == 2
    assert report["report"]["memory"]["weights_bytes"] > 0

    assert main(["inspect", str(out / "dit")]) == 0
    text = capsys.readouterr().out
    assert "tensorrt-rtx" in text and "targets: sm89, sm120" in text
    assert "2 in ONNX, 2 fused MHA layers" in text  # fp16 attention fuses
    assert "profiles (min / opt / max)" in text

    # comparing against an engine runs it: without a GPU, one clear line
    if not torch.cuda.is_available():
        assert main(["compare", str(fp16_export[0]), str(out)]) == 2
        assert "needs a CUDA GPU" in caplog.text


def test_cli_prints_a_table_and_refuses_what_is_not_an_export(fp32_export, tmp_path, capsys,
                                                              caplog):
    from cinema_trt.cli.main import main

    assert main(["inspect", str(fp32_export[0] / "connector")]) == 0
    text = capsys.readouterr().out
    assert "connector: ONNX graph" in text and "dynamic: batch, seq" in text
    assert "attention blocks: 2" in text
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["inspect", str(tmp_path / "notes.txt")]) == 2
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in caplog.text
