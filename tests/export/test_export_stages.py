"""Every stage of the tiny preset exports to a checked ONNX graph that ONNX Runtime runs
like PyTorch at two different dynamic shapes."""

from __future__ import annotations

import onnx
import pytest
import torch

from cinema_trt.export.check import FP32_TOLERANCE
from cinema_trt.export.compare import error_stats
from cinema_trt.export.manifest import (
    MODEL_FILE,
    Precision,
    read_manifest,
    state_dict_sha256,
)
from cinema_trt.export.onnx_graph import check_onnx, save_onnx
from cinema_trt.export.ort import OrtRunner
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.fileio import onnx_sha256
from cinema_trt.models.stages import CONNECTOR, DIT, GRAPH_NAMES, graph

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", GRAPH_NAMES)
def test_manifest_describes_the_graph(stage, fp32_export, tiny_models):
    out, _ = fp32_export
    manifest = read_manifest(out / stage)
    spec = graph(stage).spec(tiny_models.config)
    assert (manifest.stage, manifest.preset, manifest.precision) == (stage, "tiny", Precision.FP32)
    assert manifest.opset >= 19  # float8 Q/DQ needs 19
    assert manifest.stage_spec() == spec  # what `cinema-trt build` compiles the stage for
    for entries, tensors in ((manifest.inputs, spec.inputs), (manifest.outputs, spec.outputs)):
        assert [(e.name, e.dtype, e.dims) for e in entries] == \
            [(t.name, lookup(t.dtype).name, t.dims) for t in tensors]
    assert manifest.source_sha256 == state_dict_sha256(graph(stage).module(tiny_models))
    assert manifest.onnx_sha256 == onnx_sha256(out / stage / MODEL_FILE)
    assert set(manifest.versions) == {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert manifest.validation.error.rel_max <= FP32_TOLERANCE


@pytest.mark.parametrize("stage", GRAPH_NAMES)
def test_graph_passes_checker_and_names_dims_from_spec(stage, fp32_export, tiny_models):
    out, _ = fp32_export
    path = out / stage / MODEL_FILE
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path)).graph
    spec = graph(stage).spec(tiny_models.config)
    io = {v.name: v for v in [*proto.input, *proto.output]}
    for tensor in (*spec.inputs, *spec.outputs):
        dims = [d.dim_param or d.dim_value for d in io[tensor.name].type.tensor_type.shape.dim]
        assert tuple(dims) == tensor.dims, tensor.name


@pytest.mark.parametrize("stage", GRAPH_NAMES)
def test_ort_matches_torch_at_two_dynamic_shapes(stage, fp32_export, tiny_models):
    """fp32 tolerance, every output: max |ORT - torch| <= 1e-4 of max |torch| (op-order
    rounding is ~1e-6 here; a wrong mask, rope table or padding rule costs > 1e-2)."""
    out, _ = fp32_export
    g = graph(stage)
    module, (_, checks) = g.module(tiny_models).eval(), g.cases(tiny_models.config)
    shapes = set()
    runner = OrtRunner(out / stage)
    for seed, case in enumerate(checks):
        inputs = g.sample_inputs(tiny_models.config, case, seed=seed)  # not the export's seeds
        shapes.add(tuple(tuple(t.shape) for t in inputs.values()))
        with torch.inference_mode():
            ref = module(**inputs)
        ref = (ref,) if isinstance(ref, torch.Tensor) else ref
        got = runner.run(inputs)
        for name, expected in zip(g.spec(tiny_models.config).output_names, ref, strict=True):
            stats = error_stats(got[name], expected)
            assert stats.rel_max <= FP32_TOLERANCE, (case, name, stats)
    assert len(shapes) == 2  # the two checks really are different shapes


def test_dit_checks_cover_one_and_three_references_and_5_and_9_frames(tiny_config):
    _, checks = DIT.cases(tiny_config)
    assert sorted((c["refs"], c["frames"]) for c in checks) == [(1, 5), (3, 9)]


def test_external_data_layout_round_trips(fp32_export, tmp_path, tiny_models):
    """Weights above the threshold go to model.onnx.data; the checker, shape inference and
    ORT read them from there (threshold 0 forces it on the tiny connector)."""
    out, _ = fp32_export
    model = onnx.load(str(out / CONNECTOR.name / MODEL_FILE))
    files = save_onnx(model, tmp_path / MODEL_FILE, threshold=0)
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    graph_only = onnx.load(str(files[0]), load_external_data=False)
    inline = [t for t in graph_only.graph.initializer
              if t.data_location != onnx.TensorProto.EXTERNAL]
    assert len(inline) < len(graph_only.graph.initializer)  # the weights moved out...
    assert all(len(t.raw_data) < 1024 for t in inline)  # ...all but tiny constants
    check_onnx(files[0])
    import onnxruntime as ort

    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    inputs = CONNECTOR.sample_inputs(tiny_models.config, {"batch": 2, "seq": 9})
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.inference_mode():
        ref = tiny_models.aligner(**inputs)
    assert error_stats(torch.from_numpy(got), ref).rel_max <= FP32_TOLERANCE
