"""Which (runtime, precision) pairs a run measures: decided from the config and the machine
alone (cheap, testable), with a `Skip` and its reason for everything else.

    torch     eager PyTorch; fp32 anywhere, fp16/bf16 on CUDA
    ort       ONNX Runtime on the exported graphs: fp32 and fp16 exports (`--dtype`), and
              fp8 = the fp32 graphs with the per-step stages' FP8 Q/DQ graphs
    tensorrt  engines built strongly typed from exports in their precision (needs CUDA and
              the `tensorrt` module); fp8 = the fp16 engines with FP8 per-step stages
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from cinema_trt.models.backends import ORT, TENSORRT, TORCH
from cinema_trt.models.precision import ORT_NO_BF16, Precision, policy

from .config import BenchConfig

EXPORTS = ("onnx", "onnxruntime", "onnxscript")  # what an exported-graph variant imports


@dataclass(frozen=True)
class Skip:
    runtime: str
    precision: str
    reason: str
    target: str = "all"  # "all", or "served" when only the served run is skipped


def _tensorrt_missing(device: str) -> str | None:
    from cinema_trt.engines.deps import unusable

    if not device.startswith("cuda"):
        return "TensorRT needs a CUDA GPU; this run is on the CPU"
    return unusable(TENSORRT.name)


def _onnx_missing() -> str | None:
    for module in EXPORTS:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'cinema-trt[onnx]')"
    return None


def _skip_reason(runtime: str, precision: Precision, device: str) -> str | None:
    if runtime == TORCH:
        if not policy(precision).compute:
            return ("eager PyTorch has no FP8 inference path; FP8 runs as Q/DQ graphs "
                    f"({ORT.name}, {TENSORRT.name})")
        if precision is not Precision.FP32 and device == "cpu":
            return f"{precision.value} eager is measured on CUDA only (CPU kernels emulate it)"
        return None
    if runtime == ORT.name:
        if precision is Precision.BF16:
            return f"bf16 graphs run on TensorRT: {ORT_NO_BF16}"
        return _onnx_missing()
    return _onnx_missing() or _tensorrt_missing(device)


def plan_variants(bench: BenchConfig) -> tuple[list[tuple[str, str]], list[Skip]]:
    """([(runtime, precision) to measure], [skipped pairs with reasons]) in config order."""
    planned, skipped = [], []
    for runtime in bench.runtimes:
        for precision in bench.precisions:
            reason = _skip_reason(runtime, Precision.parse(precision), bench.device)
            if reason is None:
                planned.append((runtime, precision))
            else:
                skipped.append(Skip(runtime, precision, reason))
    return planned, skipped
