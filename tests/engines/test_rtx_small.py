"""The `small` preset's attention stages (8x tiny's width, 4 heads of 64) built with
TensorRT-RTX on the CPU, fp16 and FP8, for sm89+sm120: their attention fuses and their FP8
linears compute in FP8 at a width where the builder has real choices. Slow tier: the two
exports take ~1 min (fp16) and ~1.5 min (FP8) on a 2-core CPU, the builds ~20 s.
"""

from __future__ import annotations

import pytest

from cinema_trt.engines.build import BuildRequest, build_stages
from cinema_trt.engines.config import BuildConfig, inspect_onnx
from cinema_trt.export.manifest import read_manifest

pytestmark = pytest.mark.slow

STAGES = ["dit", "connector", "mllm_text"]
TARGETS = ("sm89", "sm120")


@pytest.fixture(scope="module")
def small_engines(require, tmp_path_factory):
    """{precision: (export folder, engine folder)} for fp16 and fp8."""
    from cinema_trt.export.driver import export_stages
    from cinema_trt.models.presets import get_preset

    require("tensorrt_rtx", "pip install tensorrt-rtx-cu12")
    small = get_preset("small")
    built = {}
    for precision, fp8 in (("fp16", False), ("fp8", True)):
        onnx_dir = tmp_path_factory.mktemp(f"small_onnx_{precision}")
        export_stages(small, onnx_dir, stages=STAGES, fp8=fp8, dtype="fp16", progress=False)
        out = tmp_path_factory.mktemp(f"small_rtx_{precision}")
        build_stages(BuildRequest(onnx_dir, out, BuildConfig(precision=precision,
                                                             targets=TARGETS),
                                  runtime="tensorrt-rtx"))
        built[precision] = onnx_dir, out
    return built


@pytest.mark.parametrize("precision", ("fp16", "fp8"))
@pytest.mark.parametrize("stage", STAGES)
def test_small_attention_is_fused(small_engines, precision, stage):
    onnx_dir, out = small_engines[precision]
    attention = read_manifest(out / stage).build.report["attention"]
    assert attention["onnx"] == len(inspect_onnx(onnx_dir / stage / "model.onnx")
                                    .attention_nodes) > 0
    assert attention["unfused"] == [] and attention["fused_layers"] == attention["onnx"]


@pytest.mark.parametrize("stage", STAGES)
def test_small_fp8_linears_compute_in_fp8(small_engines, stage):
    onnx_dir, out = small_engines["fp8"]
    quantized = inspect_onnx(onnx_dir / stage / "model.onnx").quantized_linears
    report = read_manifest(out / stage).build.report
    assert report["quantized_linears"]["by_precision"] == {"float8e4m3fn": len(quantized)} \
        and len(quantized) > 0
    # FP8 weights take less memory than the same stage's fp16 ones
    fp16 = read_manifest(small_engines["fp16"][1] / stage).build.report["memory"][
        "weights_bytes"]
    assert report["memory"]["weights_bytes"] < fp16
