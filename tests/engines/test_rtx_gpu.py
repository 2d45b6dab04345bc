"""TensorRT-RTX engines running on a GPU: `TensorRTRunner` with the runtime config, the
runtime cache persisted beside the plan, TensorRT-RTX's own CUDA-graph strategy, the
pipeline on the engines against ONNX Runtime, and a python-backend stage model.

NOT RUN YET: this project has had no GPU of a TensorRT-RTX target (sm75/80/86/89/120/121;
not H100/H200, sm90). The tests skip without CUDA (tests/conftest.py), without
`tensorrt_rtx`, or on a GPU outside the targets. The thresholds below were not measured on
a GPU; each says what it rests on.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch

from cinema_trt.engines.build import BuildRequest, build_stages
from cinema_trt.engines.config import BuildConfig
from cinema_trt.models.backends import TENSORRT_RTX, sm_name

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def this_gpu(require):
    require("tensorrt_rtx", "pip install tensorrt-rtx-cu12")
    major, minor = torch.cuda.get_device_capability()
    target = sm_name(f"{major}.{minor}")
    if target not in TENSORRT_RTX.targets:
        pytest.skip(f"TensorRT-RTX has no target for this GPU ({target}; it compiles for "
                    f"{', '.join(TENSORRT_RTX.targets)})")
    return target


@pytest.fixture(scope="module")
def rtx_fp16(this_gpu, fp16_export, tmp_path_factory):
    """(export folder, engine folder): every tiny stage, fp16, for this GPU's architecture
    (built the same way as on a CPU; the preset's default shapes)."""
    out = tmp_path_factory.mktemp("rtx_gpu_fp16")
    build_stages(BuildRequest(fp16_export[0], out, BuildConfig(precision="fp16",
                                                               targets=(this_gpu,)),
                              runtime="tensorrt-rtx"))
    return fp16_export[0], out


def _dit_inputs(engine_dir, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float inputs at the engine's optimal profile shapes (the DiT's are all
    float32: latents, timestep, text_states, ref_latents)."""
    from cinema_trt.export.manifest import read_manifest

    manifest = read_manifest(engine_dir)
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(profile["opt"], generator=generator)
            for name, profile in manifest.build.profiles.items()}


def _runner(engine_dir, **kwargs):
    from cinema_trt.engines.trt_runtime import TensorRTRunner

    return TensorRTRunner(engine_dir, **kwargs)


def test_runner_has_a_runtime_config_and_saves_its_cache_beside_the_plan(rtx_fp16):
    _, out = rtx_fp16
    cache = out / "dit" / "runtime.cache"
    cache.unlink(missing_ok=True)
    runner = _runner(out / "dit")
    assert runner.backend is TENSORRT_RTX and runner._runtime_config is not None
    runner.run(_dit_inputs(out / "dit"))
    assert cache.is_file() and cache.stat().st_size > 0  # the kernels JIT-compiled for it


def test_second_start_loads_the_runtime_cache_and_reaches_the_first_output_sooner(rtx_fp16,
                                                                                  caplog):
    """First run without a cache JIT-compiles every kernel; a new runner with the cache
    from the first should not. Only the order is asserted (no GPU measurement yet); the
    times are logged."""
    _, out = rtx_fp16
    inputs = _dit_inputs(out / "dit")
    (out / "dit" / "runtime.cache").unlink(missing_ok=True)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        _runner(out / "dit").run(inputs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    log.info("TensorRT-RTX dit: first start %.3f s, second (runtime cache) %.3f s", *times)
    assert "loaded runtime cache" in caplog.text
    assert times[1] < times[0]


def test_cuda_graphs_use_tensorrt_rtx_strategy(rtx_fp16):
    """With cuda_graph=True the runtime config asks TensorRT-RTX for whole-graph capture
    (the runner does not capture graphs itself); replays repeat the first result exactly
    and agree with a plain runner to fp16 rounding (1e-3 of the output scale: fp16's
    epsilon is 9.8e-4; unmeasured on a GPU)."""
    import tensorrt_rtx as trt

    _, out = rtx_fp16
    inputs = _dit_inputs(out / "dit", seed=1)
    graphed = _runner(out / "dit", cuda_graph=True)
    strategy = graphed._runtime_config.cuda_graph_strategy
    assert strategy == trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    assert not graphed.captures_graphs
    results = [graphed.run(inputs)["velocity"] for _ in range(3)]
    assert all(torch.equal(results[0], r) for r in results[1:])
    plain = _runner(out / "dit").run(inputs)["velocity"]
    scale = plain.abs().max().item()
    assert (results[0] - plain).abs().max().item() <= 1e-3 * scale


def test_pipeline_on_rtx_engines_matches_onnx_runtime(rtx_fp16, tiny):
    """The pipeline runs unchanged on TensorRT-RTX engines: >= 30 dB against the same fp16
    graphs on ONNX Runtime (the TensorRT fp16 engines' gate against torch; fp16 ORT vs
    torch fp32 measured ~61 dB on CPU)."""
    import numpy as np

    from cinema_trt.engines.trt_runtime import tensorrt_runners
    from cinema_trt.export.ort import ort_runners
    from cinema_trt.models.factory import build_models
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest

    onnx_dir, out = rtx_fp16
    models = build_models(tiny)
    refs = tuple(load_image(p) for p in sample_references()[:2])
    request = GenerationRequest.with_defaults(tiny, PROMPT, refs)
    reference = CinemaPipeline(tiny, ort_runners(onnx_dir), models.processor).generate(request)
    video = CinemaPipeline(tiny, tensorrt_runners(out, export_dir=onnx_dir),
                           models.processor).generate(request)
    mse = np.mean((video.astype(np.float64) - reference.astype(np.float64)) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    log.info("TensorRT-RTX fp16 pipeline PSNR vs ONNX Runtime fp16: %.1f dB", psnr)
    assert psnr >= 30.0


def test_python_backend_stage_model_runs_rtx_plans(rtx_fp16, tiny_weights, tmp_path):
    """The repository generator's python-backend stage (runtime tensorrt) loads the
    TensorRT-RTX plan and gives the runner's own result."""
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.stage_model import load_stage_runner

    onnx_dir, out = rtx_fp16
    repo = build_repository(None, tmp_path / "repo", tiny_weights, artifacts=out,
                            options=RepositoryOptions(backend="tensorrt"), export_dir=onnx_dir)
    inputs = _dit_inputs(out / "dit", seed=2)
    served = load_stage_runner(repo / "dit" / "1", "dit", "cuda:0", "tensorrt").run(inputs)
    direct = _runner(out / "dit").run(inputs)
    assert torch.equal(served["velocity"], direct["velocity"])


@pytest.fixture(scope="module")
def rtx_streaming(this_gpu, fp16_export, tmp_path_factory):
    """(export folder, engine folder): every tiny stage, the DiT built with weight
    streaming (`cinema-trt build --weight-streaming`: strongly typed)."""
    out = tmp_path_factory.mktemp("rtx_gpu_streaming")
    build_stages(BuildRequest(fp16_export[0], out,
                              BuildConfig(precision="fp16", targets=(this_gpu,),
                                          weight_streaming=True),
                              runtime="tensorrt-rtx"))
    return fp16_export[0], out


def test_a_streamed_dit_keeps_its_budget_resident_and_computes_the_same(rtx_streaming):
    """Weight streaming moves bytes, not arithmetic: the same kernels on the same weights,
    so the streamed engine's output equals the resident one's (the bug it catches: a budget
    the runner sets after the context exists, or on the wrong engine)."""
    _, out = rtx_streaming
    resident = _runner(out / "dit")
    streamable = int(resident.engine.streamable_weights_size)
    assert streamable > 0
    streamed = _runner(out / "dit", weight_streaming_budget=streamable // 2)
    assert int(streamed.engine.weight_streaming_budget_v2) == streamable // 2
    inputs = _dit_inputs(out / "dit", seed=3)
    assert torch.equal(streamed.run(inputs)["velocity"], resident.run(inputs)["velocity"])


def test_the_repository_carries_the_budget_to_the_served_dit(rtx_streaming, tiny_weights,
                                                             tmp_path):
    """`cinema-trt repo --weight-streaming-budget` -> the dit model's config.pbtxt ->
    stage_model -> TensorRTRunner."""
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.repo_memory import MemoryRequest
    from cinema_trt.serving.stage_model import STREAMING_PARAMETER, parse_budgets
    from cinema_trt.serving.triton_config import Placement, parse_config

    onnx_dir, out = rtx_streaming
    budget = int(_runner(out / "dit").engine.streamable_weights_size) // 3
    options = RepositoryOptions(runtime="tensorrt", stage_placement=Placement.on((0,), 1),
                                memory=MemoryRequest(weight_streaming_budget=budget))
    repo = build_repository(None, tmp_path / "repo", tiny_weights, artifacts=out,
                            options=options, export_dir=onnx_dir)
    config = parse_config((repo / "dit" / "config.pbtxt").read_text())
    budgets = parse_budgets(config.parameters[STREAMING_PARAMETER].string_value)
    assert budgets == {"dit": budget}
    from cinema_trt.serving.stage_model import load_stage_runner

    served = load_stage_runner(repo / "dit" / "1", "dit", "cuda:0", "tensorrt", budgets)
    inputs = _dit_inputs(out / "dit", seed=4)
    assert torch.equal(served.run(inputs)["velocity"], _runner(out / "dit").run(inputs)[
        "velocity"])


def test_the_shared_layout_loads_every_engine_with_one_activation_region(rtx_fp16, tiny,
                                                                         tiny_weights, tmp_path):
    """`cinema-trt repo --layout shared --runtime tensorrt`: the cinema model's loader opens
    every engine of its version folder in one process with one SharedDeviceMemory (the
    memory plan's shared layout), and its pipeline makes the in-process engines' video (the
    same engines and shapes: bit-identical is expected, unmeasured on a GPU)."""
    import numpy as np

    from cinema_trt.engines.trt_runtime import tensorrt_runners
    from cinema_trt.models.factory import build_models
    from cinema_trt.models.media import load_image, sample_references
    from cinema_trt.models.pipeline import CinemaPipeline, GenerationRequest
    from cinema_trt.serving.layouts import orchestrator_runners
    from cinema_trt.serving.repo import RepositoryOptions, build_repository
    from cinema_trt.serving.triton_config import Placement, parse_config

    onnx_dir, out = rtx_fp16
    options = RepositoryOptions(runtime="tensorrt", layout="shared",
                                stage_placement=Placement.on((0,), 1))
    repo = build_repository(None, tmp_path / "repo", tiny_weights, artifacts=out,
                            options=options, export_dir=onnx_dir)
    config = parse_config((repo / "cinema" / "config.pbtxt").read_text())
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    runners = orchestrator_runners(tiny, repo / "cinema" / "1", parameters, "cuda:0")
    engines = [r.runner for r in runners.values() if hasattr(r.runner, "_shared")]
    assert engines and len({id(e._shared) for e in engines}) == 1  # one activation region
    models = build_models(tiny)
    refs = tuple(load_image(p) for p in sample_references()[:2])
    request = GenerationRequest.with_defaults(tiny, PROMPT, refs)
    served = CinemaPipeline(tiny, runners, models.processor).generate(request)
    local = CinemaPipeline(tiny, tensorrt_runners(out, export_dir=onnx_dir),
                           models.processor).generate(request)
    np.testing.assert_array_equal(served, local)
