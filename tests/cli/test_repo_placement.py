"""Where `cinema-trt repo` puts the stage models: `--gpus` / `--instances` -> `Placement`, and
every bad value refused with the flag or field named, before anything is written."""

from __future__ import annotations

import pytest

from cinema_trt.cli.main import main
from cinema_trt.serving.triton_config import Placement


def test_no_gpus_means_the_cpu():
    assert Placement.on((), 3) == Placement("cpu", 3, ())
    assert Placement.on() == Placement()


def test_gpus_keep_their_order_and_the_count_is_per_gpu():
    assert Placement.on((1, 0), 2) == Placement("gpu", 2, (1, 0))


@pytest.mark.parametrize("gpus", [(0, 0), (-1,), (1, -2)])
def test_gpu_indices_must_be_distinct_and_non_negative(gpus):
    with pytest.raises(ValueError, match=r"gpus=.* must be distinct GPU indices >= 0"):
        Placement.on(gpus)


def test_the_count_must_be_positive():
    with pytest.raises(ValueError, match="instance count=0 must be >= 1"):
        Placement.on((0,), 0)


@pytest.mark.parametrize(("flag", "message"), [
    ("a,b", "--gpus='a,b' must be a comma-separated list of GPU indices"),
    ("0;1", "--gpus='0;1' must be a comma-separated list of GPU indices"),
    (",", "--gpus=',' names no GPU"),
])
def test_unparseable_gpu_lists_are_usage_errors(flag, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["repo", "-o", str(tmp_path / "models"), "--gpus", flag])
    assert exit_info.value.code == 2  # argparse's usage-error status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--gpus", "0,0"], "gpus=(0, 0) must be distinct GPU indices"),
    (["--gpus", "0", "--instances", "0"], "instance count=0 must be >= 1"),
])
def test_bad_placements_exit_2_with_one_line_and_write_nothing(flags, message, tiny_weights,
                                                               tmp_path, caplog):
    out = tmp_path / "models"
    assert main(["repo", "-o", str(out), "--weights", str(tiny_weights), *flags]) == 2
    assert message in caplog.text
    assert not out.exists()
