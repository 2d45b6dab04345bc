"""BenchConfig, the CLI and the variant plan: bad options fail early and clearly, and
everything not measured here is listed with its reason."""

from __future__ import annotations

import argparse

import pytest
import torch

from cinema_trt.benchmarks.config import BenchConfig
from cinema_trt.benchmarks.plan import plan_variants
from cinema_trt.cli import bench as bench_cli
from cinema_trt.models.precision import ORT_NO_BF16

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU plan")


@pytest.mark.parametrize("options, message", [
    (dict(runtimes=("torch", "jax")), r"unknown runtime \['jax'\]"),
    (dict(precisions=("int4",)), r"unknown precision \['int4'\]"),
    (dict(runtimes=()), "at least one"),
    (dict(runs=0), "runs=0 must be >= 1"),
    (dict(warmup=-1), "warmup=-1 must be >= 0"),
    (dict(threads=-2), "threads=-2 must be >= 0"),
    (dict(preset="huge"), "unknown preset 'huge'"),
    (dict(refs=5), r"refs=5 must be in 1..4"),
    (dict(device="tpu"), "must be 'cpu' or 'cuda"),
])
def test_bad_options_are_rejected_with_the_value_and_the_rule(options, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**options)


def test_repeated_names_are_dropped_in_order():
    config = BenchConfig(runtimes=("ort", "torch", "ort"), device="cpu")
    assert config.runtimes == ("ort", "torch")


def _parse(argv):
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def test_cli_parses_comma_lists_into_the_config_and_rejects_unknown_runtimes(tmp_path):
    args = _parse(["--preset", "tiny", "--runtimes", "torch,ort", "--runs", "3"])
    assert (args.runtimes, args.runs, args.served) == (("torch", "ort"), 3, False)
    bad = _parse(["--runtimes", "torch,onnx", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unknown runtime \['onnx'\]"):
        args.func(bad)
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written


def test_cli_rejects_zero_runs_before_building_any_model(tmp_path):
    args = _parse(["--runs", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="runs=0"):
        args.func(args)


@cpu_only
def test_cpu_plan_measures_torch_and_ort_and_says_why_the_rest_is_skipped():
    planned, skipped = plan_variants(BenchConfig(device="cpu"))
    assert planned == [("torch", "fp32"), ("ort", "fp32"), ("ort", "fp16"), ("ort", "fp8")]
    reasons = {(s.runtime, s.precision): s.reason for s in skipped}
    assert set(reasons) == {("torch", "fp16"), ("torch", "bf16"), ("torch", "fp8"),
                            ("ort", "bf16"), ("tensorrt", "fp32"), ("tensorrt", "fp16"),
                            ("tensorrt", "bf16"), ("tensorrt", "fp8")}
    assert "CUDA" in reasons[("tensorrt", "fp16")]
    assert ORT_NO_BF16 in reasons[("ort", "bf16")]


def test_plan_keeps_only_the_requested_pairs():
    planned, skipped = plan_variants(BenchConfig(runtimes=("ort",), precisions=("fp8",),
                                                 device="cpu"))
    assert planned == [("ort", "fp8")] and skipped == []
