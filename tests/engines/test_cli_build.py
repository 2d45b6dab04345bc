"""`cinema-trt build`: the ORT path end to end, and clear exits for what cannot be built."""

from __future__ import annotations

import importlib.util

import pytest

from cinema_trt.cli import main as cli_main
from cinema_trt.export.manifest import read_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def main(monkeypatch):
    """`cinema-trt` itself (cli.main.main), with `build` registered if the lead has not yet."""
    if "build" not in cli_main.SUBCOMMANDS:
        monkeypatch.setattr(cli_main, "SUBCOMMANDS", (*cli_main.SUBCOMMANDS, "build"))
    return cli_main.main


def test_build_ort_writes_one_model_and_manifest_per_stage(main, connector_export, tmp_path):
    onnx_dir = connector_export[0]
    profile = tmp_path / "profiles.yaml"
    profile.write_text("preset: tiny\nseq: {min: 1, opt: 32, max: 128}\n")
    out = tmp_path / "engines"
    code = main(["build", "--onnx", str(onnx_dir), "--out", str(out), "--precision", "fp32",
                 "--profile", str(profile), "--runtime", "ort"])
    assert code == 0
    manifest = read_manifest(out / "connector").build
    assert (out / "connector" / manifest.plan_file).is_file()
    assert manifest.profiles["attention_mask"]["max"] == [1, 128]
    assert f"--profile {profile}" in manifest.rebuild_command
    assert not (out / "timing.cache").exists()  # a TensorRT-only file


def test_unknown_stage_exits_2_naming_the_available_ones(main, connector_export, tmp_path,
                                                         caplog):
    code = main(["build", "--onnx", str(connector_export[0]), "--out", str(tmp_path),
                 "--precision", "fp32", "--runtime", "ort", "--stages", "dit"])
    assert code == 2
    assert "stages ['dit'] were not exported; available: ['connector']" in caplog.text


def test_missing_export_folder_exits_2(main, tmp_path, caplog):
    code = main(["build", "--onnx", str(tmp_path / "nope"), "--out", str(tmp_path),
                 "--precision", "fp32", "--runtime", "ort"])
    assert code == 2
    assert f"ONNX folder {tmp_path / 'nope'} does not exist" in caplog.text


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown without TensorRT")
def test_tensorrt_runtime_without_tensorrt_exits_2_with_the_install_hint(main, connector_export,
                                                                           tmp_path, caplog):
    code = main(["build", "--onnx", str(connector_export[0]), "--out", str(tmp_path),
                 "--precision", "fp16"])
    assert code == 2
    assert "TensorRT is not installed" in caplog.text
    assert "pip install 'cinema-trt[gpu]'" in caplog.text and "nvcr.io/nvidia" in caplog.text
    assert not any(tmp_path.iterdir())  # nothing half-built


def test_decode_flags_reach_the_built_manifest_and_its_rebuild_command(main, connector_export,
                                                                      tmp_path):
    """`build --decode-tile/--decode-overlap/--decode-chunk` set the config the profiles
    come from (the decoder's: engines/shapes.py), recorded in every built manifest; the
    connector's own profile does not depend on them."""
    from cinema_trt.models.presets import CinemaConfig, Tiling

    out = tmp_path / "engines"
    assert main(["build", "--onnx", str(connector_export[0]), "--out", str(out), "--precision",
                 "fp32", "--runtime", "ort", "--decode-tile", "4", "--decode-overlap", "2",
                 "--decode-chunk", "2"]) == 0
    manifest = read_manifest(out / "connector")
    sampler = CinemaConfig.from_dict(manifest.config).sampler
    assert (sampler.decode_chunk, sampler.decode_tiles) == (2, Tiling(4, 2))
    assert manifest.build.rebuild_command.endswith(
        "--decode-chunk 2 --decode-tile 4 --decode-overlap 2")


def test_a_bad_decoding_exits_2_before_building(main, connector_export, tmp_path, caplog):
    code = main(["build", "--onnx", str(connector_export[0]), "--out", str(tmp_path / "e"),
                 "--precision", "fp32", "--runtime", "ort", "--decode-overlap", "2"])
    assert code == 2 and "a decode overlap (2) needs a tile size" in caplog.text
    assert not (tmp_path / "e").exists()
