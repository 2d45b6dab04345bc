"""Real TensorRT-RTX engines built on this CPU: every tiny stage in fp16, bf16 and FP8 for
sm89 + sm120, with their layer reports, fusion and FP8 checked. Nothing here runs an
engine (that needs a GPU: test_rtx_gpu.py).

The tiny exports come from the root session fixtures (fp16, bf16, FP8+fp16: ~2.5 min of
exporting, hence the slow tier, which CI runs); each precision's six (FP8: three) stages
are built once per session (~5 s per set on a 2-core CPU) and the tests read those builds.
`require` makes a missing `tensorrt_rtx` fail in CI, never skip.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from cinema_trt.cli import main as cli_main
from cinema_trt.engines.build import BuildRequest, build_stages
from cinema_trt.engines.config import BuildConfig, inspect_onnx
from cinema_trt.engines.report import LAYERS_FILE, read_layers
from cinema_trt.export.manifest import read_manifest
from cinema_trt.models.stages import FP8_GRAPHS, GRAPH_NAMES

TARGETS = ("sm89", "sm120")
ALL_STAGES = set(GRAPH_NAMES)
FP8_STAGES = set(FP8_GRAPHS)
ATTENTION_STAGES = ("dit", "connector", "mllm_text")  # graphs with attention blocks
PRECISIONS = ("fp16", "bf16", "fp8")
INSTALL = "pip install tensorrt-rtx-cu12"


def _build(folder, out, precision, stages=(), targets=TARGETS):
    return build_stages(BuildRequest(folder, out, BuildConfig(precision=precision,
                                                              targets=targets),
                                     runtime="tensorrt-rtx", stages=tuple(stages)))


@pytest.fixture(scope="session")
def rtx(require):
    return require("tensorrt_rtx", INSTALL)


@pytest.fixture(scope="session")
def rtx_engines(rtx, fp16_export, bf16_export, fp8_fp16_export, tmp_path_factory):
    """{precision: (engine folder, export folder, {stage: plan})}, built once."""
    exports = {"fp16": fp16_export[0], "bf16": bf16_export[0], "fp8": fp8_fp16_export[0]}
    built = {}
    for precision, folder in exports.items():
        out = tmp_path_factory.mktemp(f"rtx_{precision}")
        built[precision] = (out, folder, _build(folder, out, precision))
    return built


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_stage_builds_a_plan_report_and_manifest_for_the_targets(rtx_engines, rtx,
                                                                       precision):
    out, export, plans = rtx_engines[precision]
    assert set(plans) == (FP8_STAGES if precision == "fp8" else ALL_STAGES)
    for stage, plan in plans.items():
        manifest = read_manifest(out / stage)
        # the build folder describes its stage itself (I/O, config, compute dtype): its
        # manifest is the export's record with `build` filled in
        assert dataclasses.replace(manifest, build=None) == read_manifest(export / stage)
        assert manifest.compute_dtype == ("bfloat16" if precision == "bf16" else "float16")
        build = manifest.build
        assert plan.is_file() and plan.stat().st_size > 0
        assert (build.runtime, build.runtime_version) == ("tensorrt-rtx", rtx.__version__)
        assert build.targets == list(TARGETS) and build.precision == precision
        assert build.gpu_name is None  # built without a GPU, for targets
        assert build.build_config["strongly_typed"]
        assert "--runtime tensorrt-rtx --targets sm89,sm120" in build.rebuild_command
        layers = read_layers(out / stage)
        assert build.report["layers_file"] == LAYERS_FILE
        assert build.report["layers"] == len(layers) > 0
        assert {"name", "kind", "tactic", "inputs", "outputs", "compute_dtype"} <= set(layers[0])


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("stage", ATTENTION_STAGES)
def test_every_attention_is_fused_into_an_mha_kernel(rtx_engines, precision, stage):
    """Each ONNX attention (its Softmax) sits inside a fused MHA layer (`_gemm_mha_v2`).

    Shown to fail when fusion breaks: run on a tiny fp16 connector build whose first
    Softmax output was also made a graph output (as the next test does), this test failed
    at `unfused == []` with ['node_Softmax_101'] (fused_layers 1 of 2)."""
    out, export, _ = rtx_engines[precision]
    attention = read_manifest(out / stage).build.report["attention"]
    onnx_attention = inspect_onnx(export / stage / "model.onnx").attention_nodes
    assert attention["onnx"] == len(onnx_attention) > 0
    assert attention["unfused"] == []
    assert attention["fused_layers"] == attention["onnx"]  # one MHA kernel per block
    fused = [row for row in read_layers(out / stage) if "mha" in row["name"]]
    assert {node for row in fused for node in row["onnx_nodes"]} >= set(onnx_attention)


@pytest.mark.slow
def test_attention_that_cannot_fuse_is_reported_unfused(rtx_engines, tmp_path):
    """The report's detector itself: tapping the attention probabilities (a graph output)
    forces them into memory, so the builder cannot fuse that block."""
    _, export, _ = rtx_engines["fp16"]
    shutil.copytree(export / "connector", tmp_path / "onnx" / "connector")
    path = tmp_path / "onnx" / "connector" / "model.onnx"
    model = onnx.load(str(path))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(helper.make_tensor_value_info(softmax.output[0],
                                                            TensorProto.FLOAT16, None))
    onnx.save(model, str(path))
    _build(tmp_path / "onnx", tmp_path / "eng", "fp16", targets=("sm89",))
    attention = read_manifest(tmp_path / "eng" / "connector").build.report["attention"]
    assert attention["unfused"] == [softmax.name]
    assert attention["fused_layers"] == attention["onnx"] - 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(FP8_STAGES))
def test_fp8_linear_layers_compute_in_fp8(rtx_engines, stage):
    """Every MatMul/Gemm the FP8 recipe quantized (it reads a DequantizeLinear) runs in an
    engine layer whose activations and weights are FP8."""
    out, export, _ = rtx_engines["fp8"]
    quantized = inspect_onnx(export / stage / "model.onnx").quantized_linears
    report = read_manifest(out / stage).build.report["quantized_linears"]
    assert report["onnx"] == len(quantized) > 0
    assert report["by_precision"] == {"float8e4m3fn": len(quantized)}
    assert report["not_low_precision"] == []
    fp8_layers = [row for row in read_layers(out / stage)
                  if set(row["onnx_nodes"]) & set(quantized)]
    assert all("float8e4m3fn" in row["weights"] for row in fp8_layers if row["kind"] == "gemm")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ("fp16", "bf16"))
def test_half_precision_engines_compute_in_their_type(rtx_engines, precision):
    dtype = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    out, _, plans = rtx_engines[precision]
    for stage in plans:
        by_precision = read_manifest(out / stage).build.report["by_precision"]
        # float32 layers are the casts at the fp32 I/O (and the DiT's timestep embedding)
        assert max(by_precision, key=by_precision.__getitem__) == dtype, (stage, by_precision)
        assert "float8e4m3fn" not in by_precision


@pytest.mark.slow
def test_builder_memory_figures_are_recorded(rtx_engines):
    """Weights memory is the graph's weights: measured 0.93-1.14x the ONNX initializer
    bytes for the tiny fp16/FP8 dit, connector and mllm_text (a parse that picked another
    figure, e.g. the 8 MB of activations, is 50x off)."""
    for precision in ("fp16", "fp8"):
        out, export, plans = rtx_engines[precision]
        for stage in FP8_STAGES:
            memory = read_manifest(out / stage).build.report["memory"]
            model = onnx.load(str(export / stage / "model.onnx"))
            weights = sum(len(t.raw_data) for t in model.graph.initializer)
            assert 0.8 <= memory["weights_bytes"] / weights <= 1.25, (precision, stage, memory)
            assert memory["activation_bytes"] > 0 and memory["device_persistent_bytes"] >= 0
    for stage in FP8_STAGES:  # FP8 weights take less memory than fp16 ones
        fp8, fp16 = (read_manifest(rtx_engines[p][0] / stage).build.report["memory"]
                     ["weights_bytes"] for p in ("fp8", "fp16"))
        assert fp8 < fp16, stage


@pytest.mark.slow
def test_unchanged_build_is_reused_and_other_targets_rebuild(rtx_engines, tmp_path):
    out, export, plans = rtx_engines["fp8"]
    before = plans["connector"].stat().st_mtime_ns
    _build(export, out, "fp8", stages=("connector",))
    assert plans["connector"].stat().st_mtime_ns == before
    other = _build(export, tmp_path, "fp8", stages=("connector",), targets=("sm120",))
    assert read_manifest(other["connector"].parent).build.cache_key != \
        read_manifest(out / "connector").build.cache_key


@pytest.fixture
def main(monkeypatch):
    if "build" not in cli_main.SUBCOMMANDS:
        monkeypatch.setattr(cli_main, "SUBCOMMANDS", (*cli_main.SUBCOMMANDS, "build"))
    return cli_main.main


@pytest.mark.slow
def test_cli_builds_and_prints_the_summary(main, rtx, fp16_export, tmp_path, capsys):
    code = main(["build", "--onnx", str(fp16_export[0]), "--out", str(tmp_path),
                 "--runtime", "tensorrt-rtx", "--precision", "fp16", "--stages", "dit"])
    assert code == 0
    out = capsys.readouterr().out
    assert "dit: " in out and "fp16 for sm75,sm80,sm86,sm89,sm120,sm121" in out
    assert "attention: 2 in ONNX, 2 fused MHA layers" in out and "weights " in out
    assert not (tmp_path / "timing.cache").exists()  # TensorRT-RTX has none
    assert json.loads((tmp_path / "dit" / LAYERS_FILE).read_text())


def test_cli_refuses_fp8_for_sm80_before_reading_the_export(main, rtx, tmp_path, caplog):
    # the --onnx folder does not exist: the refusal must come before anything is read
    code = main(["build", "--onnx", str(tmp_path / "missing"), "--out", str(tmp_path / "e"),
                 "--runtime", "tensorrt-rtx", "--precision", "fp8", "--targets", "sm80"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["precision=fp8 needs sm89 or newer, so it cannot target sm80; use "
                      "--targets sm89,sm120,sm121, or --precision fp16 for sm80"]
    assert not (tmp_path / "e").exists()


def test_cli_refuses_targets_for_ort(main, tmp_path, caplog):
    code = main(["build", "--onnx", str(tmp_path), "--out", str(tmp_path / "e"),
                 "--runtime", "ort", "--precision", "fp32", "--targets", "sm89"])
    assert code == 2 and "--targets names GPU architectures" in caplog.text


@pytest.mark.slow
def test_repository_serves_rtx_plans_with_the_python_backend(rtx_engines, fp16_export,
                                                             tiny_weights, tmp_path, caplog):
    """Triton's tensorrt_plan backend cannot load TensorRT-RTX plans: asked for the tensorrt
    backend, the generator says so and writes python-backend stage models (runtime
    tensorrt: TensorRTRunner) over the engine folders."""
    from cinema_trt.serving.repo import RepositoryOptions, build_repository

    engines = rtx_engines["fp16"][0]
    repo = build_repository(None, tmp_path / "repo", tiny_weights, artifacts=engines,
                            options=RepositoryOptions(backend="tensorrt"),
                            export_dir=fp16_export[0])
    for stage in ("mllm", "connector", "vae_encoder", "dit", "vae_decoder"):
        config = (repo / stage / "config.pbtxt").read_text()
        assert 'backend: "python"' in config and "tensorrt_plan" not in config, stage
        assert 'string_value: "tensorrt"' in config, stage
        assert not list((repo / stage / "1").glob("*.plan"))
    assert (repo / "dit" / "1" / "engines" / "dit" / "model.plan").is_file()
    assert (repo / "mllm" / "1" / "engines" / "mllm_text" / "model.plan").is_file()
    assert "built with TensorRT-RTX, which Triton's tensorrt_plan backend cannot load" \
        in caplog.text


def test_fp32_graph_builds_fp32_and_half_precision_asks_for_a_half_export(rtx, connector_export,
                                                                          tmp_path):
    """TensorRT-RTX has no weak typing: an fp32 export builds as fp32, and --precision fp16
    on it is refused with the export that gives an fp16 engine (it used to reach the
    builder and fail on a missing BuilderFlag.FP16)."""
    plans = _build(connector_export[0], tmp_path / "fp32", "fp32")
    by_precision = read_manifest(plans["connector"].parent).build.report["by_precision"]
    assert max(by_precision, key=by_precision.__getitem__) == "float32"
    with pytest.raises(ValueError, match=r"TensorRT >= 11 and TensorRT-RTX build nothing else.*"
                                         r"cinema-trt export --dtype fp16"):
        _build(connector_export[0], tmp_path / "fp16", "fp16")
    assert not (tmp_path / "fp16").exists()


@pytest.mark.slow  # the fp32 export of the decoder (~60 s)
def test_the_decoder_step_builds_with_a_profile_for_its_flag_and_every_state(rtx, tiny_exports,
                                                                           tiny_config,
                                                                           tmp_path):
    """The chunked decoder's step graph (a bool `first` input, a state input and output per
    causal conv) builds; its profile covers every input the spec derives (engines/
    shapes.py), states spanning the deployment's sizes at their conv's scale."""
    from cinema_trt.models.stages import VAE_DECODER

    folder, _ = tiny_exports.folder([VAE_DECODER.name])
    plans = _build(folder, tmp_path, "fp32", [VAE_DECODER.name], targets=("sm89",))
    plan = plans[VAE_DECODER.name]
    assert plan.is_file() and plan.stat().st_size > 0
    build = read_manifest(plan.parent).build
    spec = VAE_DECODER.spec(tiny_config)
    assert set(build.profiles) == set(spec.input_names)
    assert build.profiles["first"] == {"min": [1], "opt": [1], "max": [1]}
    s = tiny_config.sampler  # the preset's default shapes: one static size
    for name in spec.input_names[2:]:
        shape = build.profiles[name]["opt"]
        assert shape[2] == 2 and shape[3] * s.width == shape[4] * s.height, (name, shape)
    assert {build.profiles[n]["max"][3] for n in spec.input_names[2:]} == \
        {s.height // 8 * k for k in (1, 2, 4, 8)}
    assert build.report["layers"] > 0


@pytest.mark.slow  # the fp32 export of the decoder (~60 s)
def test_a_decoder_built_for_tiles_has_the_tile_profile(rtx, tiny_exports, tiny_config,
                                                         tmp_path):
    """`cinema-trt build --decode-tile 4 --decode-overlap 2`: the decoder step's profile is
    one 4x4-latent tile of the preset's 64x64 frame (8x8 latents), its states a tile's; the
    manifest records the decoding it was built for, and its rebuild command repeats it."""
    from cinema_trt.models.presets import CinemaConfig, Decoding, Tiling
    from cinema_trt.models.stages import VAE_DECODER

    folder, _ = tiny_exports.folder([VAE_DECODER.name])
    plans = build_stages(BuildRequest(
        folder, tmp_path, BuildConfig(precision="fp32", targets=("sm89",)),
        runtime="tensorrt-rtx", stages=(VAE_DECODER.name,),
        decoding=Decoding(tile=4, overlap=2)))
    manifest = read_manifest(plans[VAE_DECODER.name].parent)
    assert manifest.build.profiles["latents"]["max"] == [1, 16, 1, 4, 4]
    assert tiny_config.sampler.height // 8 == 8  # the whole frame would be 8x8
    spec = VAE_DECODER.spec(tiny_config)
    assert {manifest.build.profiles[n]["max"][3] for n in spec.input_names[2:]} == \
        {4 * k for k in (1, 2, 4, 8)}
    assert CinemaConfig.from_dict(manifest.config).sampler.decode_tiles == Tiling(4, 2)
    assert manifest.build.rebuild_command.endswith("--decode-tile 4 --decode-overlap 2")
    assert manifest.build.report["memory"]["activation_bytes"] > 0


def test_plugin_graph_is_refused_before_any_stage_is_built(rtx, connector_export, tmp_path):
    """A --attention-plugin graph among the stages stops the TensorRT-RTX build up front."""
    shutil.copytree(connector_export[0], tmp_path / "onnx")
    path = tmp_path / "onnx" / "connector" / "model.onnx"
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("triton_attention", [], [], domain="trt.plugins"))
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="has TensorRT plugin nodes .'triton_attention'. .*"
                                         "no Python plugins"):
        _build(tmp_path / "onnx", tmp_path / "eng", "fp32")
    assert not (tmp_path / "eng").exists()


def test_one_logger_per_module_and_builds_capture_its_messages(rtx):
    from cinema_trt.engines.progress import TENSORRT_LOG
    from cinema_trt.engines.trt_build import trt_logger

    logger = trt_logger(rtx)
    assert trt_logger(rtx) is logger  # builders and runtimes share the process's logger
    with TENSORRT_LOG.capture() as messages:
        network = rtx.Builder(logger).create_network(0)
        assert not rtx.OnnxParser(network, logger).parse(b"not an onnx model")
    assert any("Failed to parse the ONNX model" in m for m in messages)
    logger.log(rtx.ILogger.Severity.VERBOSE, "after the capture")
    assert "after the capture" not in messages
