"""`cinema-trt export`: flags -> export_stages, a summary table, exit code 0."""

from __future__ import annotations

import argparse

import pytest

from cinema_trt.cli import export as export_cli
from cinema_trt.export.manifest import read_manifest, state_dict_sha256


def _parse(argv):
    parser = argparse.ArgumentParser(prog="cinema-trt")
    export_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["export", *argv])


def test_flags_map_onto_options():
    args = _parse(["--preset", "small", "--out", "o", "--stages", "dit", "mllm", "--fp8",
                   "--quiet"])
    assert (args.preset, str(args.out), args.stages, args.fp8, args.quiet) == \
        ("small", "o", ["dit", "mllm"], True, True)
    assert args.func is export_cli.run
    assert args.calibrator == "builtin"  # the default needs no optional package


def test_calibrator_flag_offers_the_library_calibrators():
    from cinema_trt.export.calibration import CALIBRATORS

    assert export_cli.CALIBRATORS == CALIBRATORS
    assert _parse(["--out", "o", "--fp8", "--calibrator", "modelopt"]).calibrator == "modelopt"
    with pytest.raises(SystemExit):
        _parse(["--out", "o", "--fp8", "--calibrator", "entropy"])


@pytest.mark.slow
def test_export_from_a_weights_folder_prints_a_summary(tiny_models, tmp_path, capsys):
    """Weights saved from the seeded models give the same source hash as the models."""
    from cinema_trt.models.factory import save_models

    weights = save_models(tiny_models, tmp_path / "weights")
    args = _parse(["--preset", "tiny", "--weights", str(weights), "--out",
                   str(tmp_path / "onnx"), "--stages", "connector", "--quiet"])
    assert args.func(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["stage", "precision", "size", "params"]
    assert table[1].split()[:2] == ["connector", "fp32"]
    manifest = read_manifest(tmp_path / "onnx" / "connector")
    assert manifest.source_sha256 == state_dict_sha256(tiny_models.aligner)


def test_unknown_preset_is_a_value_error(tmp_path):
    args = _parse(["--preset", "huge", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        args.func(args)
