"""TensorRT on a GPU: build tiny stages in fp16 and fp8, run them against PyTorch, reuse
plans and the timing cache. Skipped without CUDA (tests/conftest.py) or TensorRT."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import time

import pytest
import torch

from cinema_trt.engines.config import BuildConfig, Precision
from cinema_trt.engines.exported import ExportedStage
from cinema_trt.engines.shapes import shapes_from_dict
from cinema_trt.export.manifest import read_manifest

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                 reason="needs TensorRT (pip install 'cinema-trt[gpu]')")]

SEQ = {"seq": {"min": 1, "opt": 32, "max": 128}}


def _inputs(batch: int, seq: int, pad: int = 0, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, 64, generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    if pad:
        mask[:, seq - pad:] = 0
    return {"hidden_states": hidden, "attention_mask": mask}


def _build(onnx_dir, out, tiny, config):
    from cinema_trt.engines.trt_build import build_engine

    return build_engine(ExportedStage.read(onnx_dir / "connector"), out / "connector",
                        shapes_from_dict(SEQ, tiny), config)


@pytest.fixture(scope="module")
def fp16_engine(connector_export_fp16, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    config = BuildConfig(precision=Precision.FP16, workspace_gib=1,
                         timing_cache=out / "timing.cache")
    return _build(connector_export_fp16[0], out, tiny, config), config


def test_fp16_engine_matches_torch_within_fp16_error(fp16_engine, connector_export_fp16):
    from cinema_trt.engines.trt_runtime import TensorRTRunner

    module = connector_export_fp16[1]
    half_module = copy.deepcopy(module).to("cuda", torch.float16)
    runner = TensorRTRunner(fp16_engine[0].parent)
    for batch_seq in ((1, 32), (1, 97)):
        inputs = _inputs(*batch_seq, pad=5)
        with torch.inference_mode():
            reference = module(**inputs)  # fp32 CPU
            half = half_module(inputs["hidden_states"].cuda().half(),
                               inputs["attention_mask"].cuda())
        got = runner.run(inputs)["text_states"]
        assert got.is_cuda and got.dtype == torch.float32 and got.shape == reference.shape
        torch_error = (half.float().cpu() - reference).abs().max().item()
        trt_error = (got.cpu() - reference).abs().max().item()
        # TensorRT's fp16 may fuse and order sums differently than PyTorch's fp16: allow
        # twice PyTorch's own fp16 error (plus one fp16 ulp at 1.0 for tiny errors)
        assert trt_error <= 2 * torch_error + 1e-3, (batch_seq, trt_error, torch_error)


def test_manifest_records_this_tensorrt_and_gpu(fp16_engine):
    import tensorrt as trt

    manifest = read_manifest(fp16_engine[0].parent).build
    major, minor = torch.cuda.get_device_capability()
    assert manifest.runtime_version == trt.__version__
    assert manifest.compute_capability == f"{major}.{minor}"
    assert manifest.gpu_name == torch.cuda.get_device_name()
    assert manifest.build_config["precision"] == "fp16"


def test_out_of_profile_input_names_the_dim(fp16_engine):
    from cinema_trt.engines.trt_runtime import TensorRTRunner

    runner = TensorRTRunner(fp16_engine[0].parent)
    with pytest.raises(ValueError, match=r"'hidden_states' dim 1 \(seq\) is 129, outside the "
                                         r"engine's profile range \[1, 128\]"):
        runner.run(_inputs(1, 129))


def test_cuda_graphs_and_shared_memory_give_the_plain_results(fp16_engine):
    from cinema_trt.engines.trt_memory import SharedDeviceMemory
    from cinema_trt.engines.trt_runtime import TensorRTRunner

    plain = TensorRTRunner(fp16_engine[0].parent)
    shared = SharedDeviceMemory()
    graphed = TensorRTRunner(fp16_engine[0].parent, cuda_graph=True, shared_memory=shared)
    second = TensorRTRunner(fp16_engine[0].parent, shared_memory=shared)
    for seq in (32, 64, 32):  # two shape buckets, the first replayed
        inputs = _inputs(1, seq, pad=3, seed=seq)
        expected = plain.run(inputs)["text_states"]
        # same engine, same kernels: bitwise equal
        assert torch.equal(graphed.run(inputs)["text_states"], expected)
        assert torch.equal(second.run(inputs)["text_states"], expected)
    assert len(graphed._buckets) == 2


def test_unchanged_build_reuses_the_plan(fp16_engine, connector_export_fp16, tiny):
    plan, config = fp16_engine
    stamp = plan.stat().st_mtime_ns
    assert _build(connector_export_fp16[0], plan.parent.parent, tiny, config) == plan
    assert plan.stat().st_mtime_ns == stamp


def test_rebuild_with_the_timing_cache_is_faster(connector_export_fp16, tiny, tmp_path):
    cache = tmp_path / "timing.cache"
    config = BuildConfig(precision=Precision.FP16, workspace_gib=1, optimization_level=5,
                         timing_cache=cache)
    start = time.perf_counter()
    _build(connector_export_fp16[0], tmp_path / "first", tiny, config)
    cold = time.perf_counter() - start
    assert cache.stat().st_size > 0
    start = time.perf_counter()
    _build(connector_export_fp16[0], tmp_path / "second", tiny, config)  # no plan reuse
    warm = time.perf_counter() - start
    assert warm < cold, (warm, cold)


def test_fp8_engine_follows_the_fp8_reference(fp8_connector_graph, tiny, tmp_path):
    from cinema_trt.engines.trt_runtime import TensorRTRunner

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 (Ada) or newer")
    folder, weights, reference = fp8_connector_graph
    config = BuildConfig(precision=Precision.FP8, workspace_gib=1)
    plan = _build(folder, tmp_path, tiny, config)
    assert read_manifest(plan.parent).build.build_config["strongly_typed"]
    inputs = _inputs(2, 40, pad=7)
    got = TensorRTRunner(plan.parent).run(inputs)["text_states"].cpu()
    fp8 = reference(weights, **inputs)
    unquantized = _fp32(weights, inputs)
    quantization_error = (fp8 - unquantized).abs().mean().item()
    # the engine must follow the FP8 rounding (not skip the Q/DQ): its distance to the FP8
    # reference (fp32 summation order, TF32 scores) is far below the FP8 quantization error
    assert (got - fp8).abs().mean().item() < 0.25 * quantization_error


def _fp32(weights, inputs):
    hidden, mask = inputs["hidden_states"], inputs["attention_mask"]
    scores = torch.einsum("qd,bsd->bqs", weights["queries"], hidden) / 8.0
    scores = scores + (1 - mask.float())[:, None, :] * -1e4
    return (torch.softmax(scores, dim=-1) @ hidden) @ weights["proj"]


def test_another_build_option_is_a_different_engine(fp16_engine, connector_export_fp16,
                                                     tiny):
    plan, config = fp16_engine
    other_config = dataclasses.replace(config, optimization_level=1)
    other = _build(connector_export_fp16[0], plan.parent.parent / "level1", tiny, other_config)
    assert read_manifest(other.parent).build.cache_key != \
        read_manifest(plan.parent).build.cache_key


def test_weakly_typed_fp16_of_an_fp32_graph_on_tensorrt_10_only(connector_export, tiny,
                                                                tmp_path):
    """TensorRT 10 still builds an fp32 graph with BuilderFlag.FP16 (deprecated); TensorRT
    11 has no such flag, and the build is refused before TensorRT is called."""
    import tensorrt as trt
    from packaging.version import Version

    config = BuildConfig(precision=Precision.FP16, workspace_gib=1)
    if Version(trt.__version__).major >= 11:
        with pytest.raises(ValueError, match="TensorRT-RTX build nothing else"):
            _build(connector_export[0], tmp_path, tiny, config)
        return
    plan = _build(connector_export[0], tmp_path, tiny, config)
    assert not read_manifest(plan.parent).build.build_config["strongly_typed"]
