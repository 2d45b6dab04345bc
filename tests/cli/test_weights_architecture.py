"""The weights folder is the architecture: `--weights DIR` without `--preset` runs
DIR/cinema_config.json; `--preset` with `--weights` must agree or fail naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from cinema_trt.cli.main import main
from cinema_trt.models.presets import PRESETS, get_preset


@pytest.fixture(scope="module")
def custom_weights(tmp_path_factory):
    """The tiny widths with 1 DiT block and 1 MLLM text layer: a depth no preset has."""
    from cinema_trt.models.factory import build_models, save_models

    tiny = get_preset("tiny")
    config = dataclasses.replace(
        tiny, name="custom", dit=dataclasses.replace(tiny.dit, depth=1),
        mllm=dataclasses.replace(tiny.mllm, num_layers=1))
    assert all((p().dit.depth, p().mllm.num_layers) != (1, 1) for p in PRESETS.values())
    return save_models(build_models(config), tmp_path_factory.mktemp("custom-weights"))


def _attention_layers(onnx_path) -> int:
    """One Softmax per attention layer (a tiny-preset export has 2 in dit and mllm_text;
    initializer names are no count: the exporter names only the first layer's)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(node.op_type == "Softmax" for node in model.graph.node)


@pytest.mark.slow
def test_export_takes_the_architecture_from_the_weights_folder(custom_weights, tmp_path):
    out = tmp_path / "onnx"
    assert main(["export", "--weights", str(custom_weights), "--out", str(out),
                 "--stages", "dit", "mllm_text", "--quiet"]) == 0
    # the tiny preset (the default without --weights) would give 2 each
    assert _attention_layers(out / "dit" / "model.onnx") == 1
    assert _attention_layers(out / "mllm_text" / "model.onnx") == 1


def test_a_preset_that_disagrees_with_the_weights_names_the_first_field(custom_weights,
                                                                        tmp_path, caplog):
    from cinema_trt.cli.export import ExportOptions, export_from_options

    with pytest.raises(ValueError, match=r"preset 'custom': mllm.num_layers=1, but preset "
                                         r"'tiny' has 2"):
        export_from_options(ExportOptions(out=tmp_path, preset="tiny", weights=custom_weights))
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_every_weights_command_resolves_through_one_function(custom_weights):
    from cinema_trt.models.factory import command_config

    assert command_config(None, custom_weights).dit.depth == 1
    assert command_config(None, None) == get_preset("tiny")
    assert command_config("small", None) == get_preset("small")
    with pytest.raises(FileNotFoundError, match="cinema_config.json"):
        command_config(None, custom_weights / "mllm")


def test_generate_runs_the_weights_folder_without_a_preset(custom_weights, tmp_path, caplog):
    from cinema_trt.models.media import sample_references

    caplog.set_level("INFO", logger="cinema_trt.models.factory")
    assert main(["generate", "--weights", str(custom_weights), "--ref",
                 str(sample_references()[0]), "--prompt", "a toy", "--frames", "5",
                 "--height", "16", "--width", "16", "--steps", "1", "--quiet",
                 "-o", str(tmp_path / "v.gif")]) == 0
    assert f"loaded custom weights from {custom_weights}" in caplog.text
    assert main(["generate", "--preset", "tiny", "--weights", str(custom_weights), "--ref",
                 str(sample_references()[0]), "--prompt", "x",
                 "-o", str(tmp_path / "w.gif")]) == 2
    assert "'custom': mllm.num_layers=1, but preset 'tiny' has 2" in caplog.text


def _demo_args(workdir, output):
    return ["demo", "--workdir", str(workdir), "--runtime", "ort", "--frames", "5",
            "--height", "16", "--width", "16", "--steps", "1", "--quiet", "-o", str(output)]


@pytest.mark.slow
@pytest.mark.server
def test_demo_serves_the_weights_folder_without_a_preset(custom_weights, tritonserver_binary,
                                                        serve_extra, tmp_path, read_video):
    workdir = tmp_path / "work"
    assert main([*_demo_args(workdir, tmp_path / "v.mp4"), "--weights",
                 str(custom_weights)]) == 0
    assert read_video(tmp_path / "v.mp4").shape == (5, 16, 16, 3)
    assert not (workdir / "weights").exists()  # the given weights, no random ones made
    (export,) = (workdir / "onnx").iterdir()  # one cache entry, keyed on the weights' hash
    assert _attention_layers(export / "dit" / "model.onnx") == 1
    assert _attention_layers(export / "mllm_text" / "model.onnx") == 1


def test_demo_refuses_a_preset_that_disagrees_with_the_weights(custom_weights, tmp_path,
                                                               caplog):
    workdir = tmp_path / "work"
    assert main([*_demo_args(workdir, tmp_path / "v.mp4"), "--preset", "tiny", "--weights",
                 str(custom_weights)]) == 2
    assert "'custom': mllm.num_layers=1, but preset 'tiny' has 2" in caplog.text
    assert not workdir.exists()  # refused before any work


def _bench_args(tmp_path):
    return ["bench", "--runtimes", "torch", "--precisions", "fp32", "--runs", "1",
            "--warmup", "0", "--device", "cpu", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "results")]


def test_bench_measures_the_weights_folder_without_a_preset(custom_weights, tmp_path):
    import json

    assert main([*_bench_args(tmp_path), "--weights", str(custom_weights)]) == 0
    (record,) = (tmp_path / "results").glob("*.json")
    data = json.loads(record.read_text())
    assert "-custom-" in record.name and data["preset"] == "custom"
    assert (data["config"]["dit"]["depth"], data["config"]["mllm"]["num_layers"]) == (1, 1)
    assert data["settings"]["weights"] == str(custom_weights)


def test_bench_refuses_a_preset_that_disagrees_with_the_weights(custom_weights, tmp_path,
                                                                caplog):
    assert main([*_bench_args(tmp_path), "--preset", "tiny", "--weights",
                 str(custom_weights)]) == 2
    assert "'custom': mllm.num_layers=1, but preset 'tiny' has 2" in caplog.text
    assert not (tmp_path / "results").exists()
