"""ORT against TensorRT through polygraphy (`cinema-trt compare EXPORT ENGINES`): written
for a CUDA machine, not run in this project's sessions so far (no GPU with TensorRT)."""

from __future__ import annotations

import importlib.util

import pytest

from cinema_trt.models.stages import GRAPH_NAMES, MLLM

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# every graph but the MLLM's vision graph: its inputs come from image grids that an
# engine profile does not record (engines/accuracy.py profile_inputs)
STAGES = tuple(g for g in GRAPH_NAMES if g != MLLM.graphs[0].name)


def _backend_for_this_gpu() -> str:
    """tensorrt where installed; else tensorrt-rtx if this GPU is one of its targets."""
    import torch

    if importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    from cinema_trt.models.backends import TENSORRT_RTX, sm_name

    major, minor = torch.cuda.get_device_capability()
    if sm_name(f"{major}.{minor}") not in TENSORRT_RTX.targets:
        pytest.skip(f"no tensorrt module, and sm{major}{minor} is not a TensorRT-RTX target")
    return "tensorrt-rtx"


@pytest.mark.parametrize("stage", STAGES)
def test_fp16_engine_matches_its_export_on_ort(stage, fp16_export, require, tmp_path):
    """The engine computes its export's graph: within twice the export's gate vs torch."""
    require("polygraphy", 'pip install -e ".[test]"')
    from cinema_trt.cli.main import main
    from cinema_trt.engines.accuracy import compare_stage

    backend = _backend_for_this_gpu()
    out = tmp_path / "engines"
    assert main(["build", "--onnx", str(fp16_export[0]), "--out", str(out), "--runtime",
                 backend, "--precision", "fp16", "--stages", stage]) == 0
    result = compare_stage(fp16_export[0] / stage, out / stage)
    assert result.tolerance.metric == "rel_max"
    assert result.passed, result.to_dict()
