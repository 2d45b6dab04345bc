"""TensorRT plugin pieces that run without TensorRT or a GPU, plus a GPU+TensorRT tier.

CPU tier: the ONNX nodes the exporter emits, the clear error without TensorRT, the launch
arguments, and ahead-of-time compilation of every kernel variant to Hopper PTX (Triton's
compiler and ptxas run on any machine; only launching needs a GPU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import onnx
import pytest
import torch

import cinema_trt.kernels.ops as kernels
from cinema_trt.kernels import plugin_aot, plugin_onnx, trt_plugin
from cinema_trt.kernels.ops import Int8Quantization
from cinema_trt.kernels.reference import QKPrologue

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_registration_raises_an_import_error_with_the_fix():
    with pytest.raises(ImportError, match=r"pip install 'cinema-trt\[gpu\]'") as info:
        trt_plugin.register_plugins()
    assert isinstance(info.value, trt_plugin.TensorRTUnavailableError)


class _TwoAttentions(torch.nn.Module):
    def forward(self, q, k, v, kv_lens):
        return (kernels.attention(q, k, v)
                + kernels.attention_int8(q, k, v, kv_lens=kv_lens, quant=Int8Quantization(64, 32)))


def _export(module, args, dynamic_shapes=None) -> onnx.ModelProto:
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                custom_translation_table=plugin_onnx.onnx_translation_table(),
                                verbose=False)
    return program.model_proto


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_onnx_export_emits_plugin_nodes_tensorrt_can_match():
    q = torch.randn(2, 4, 17, 32)
    seq = torch.export.Dim("seq")
    model = _export(_TwoAttentions(), (q, q, q, torch.tensor([17, 5], dtype=torch.int32)),
                    dynamic_shapes=({2: seq}, {2: seq}, {2: seq}, None))
    plugins = {n.op_type: n for n in model.graph.node if n.domain == plugin_onnx.ONNX_DOMAIN}
    assert set(plugins) == {plugin_onnx.ATTENTION_PLUGIN, plugin_onnx.ATTENTION_INT8_PLUGIN}
    fused, int8 = plugins[plugin_onnx.ATTENTION_PLUGIN], plugins[plugin_onnx.ATTENTION_INT8_PLUGIN]
    assert _attrs(fused) == {"plugin_namespace": b"cinema", "plugin_version": b"1", "aot": 1,
                             "scale": pytest.approx(32 ** -0.5)}
    assert _attrs(int8)["aot"] == 0 and _attrs(int8)["q_block"] == 64
    assert _attrs(int8)["k_block"] == 32 and _attrs(int8)["smooth_k"] == 1
    # without kv_lens the graph builds full lengths from K's (dynamic) shape
    assert len(fused.input) == 4 and fused.input[3] not in {i.name for i in model.graph.input}
    assert int8.input[3] == model.graph.input[3].name
    assert any(o.domain == plugin_onnx.ONNX_DOMAIN for o in model.opset_import)


class _WithPrologue(torch.nn.Module):
    def forward(self, q, k, v, w):
        return kernels.attention(q, k, v, prologue=QKPrologue(w, w))


def test_onnx_export_refuses_the_prologue_the_plugin_lacks():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(Exception) as info:
        _export(_WithPrologue(), (q, q, q, torch.ones(16)))
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("no fused RMS-norm/RoPE prologue" in message for message in chain)


def test_int_arguments_are_the_strides_of_contiguous_tensors():
    values = plugin_aot.int_arg_values(2, 48, 300, 500, 64)
    for prefix, seq in (("q", 300), ("k", 500), ("v", 500), ("o", 300)):
        row = "m" if prefix in "qo" else "n"
        strides = torch.empty(2, 48, seq, 64).stride()
        assert (values[f"stride_{prefix}b"], values[f"stride_{prefix}h"],
                values[f"stride_{prefix}{row}"]) == strides[:3]
    assert (values["H"], values["N_CTX_Q"], values["N_CTX_KV"]) == (48, 300, 500)


_AOT_SCRIPT = r"""
import json, os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from cinema_trt.kernels.plugin_aot import AotAttentionSpec, compile_attention
from cinema_trt.kernels.tuning import PLUGIN_TACTICS
from cinema_trt.kernels.fused_attention import _attn_fwd
from cinema_trt.kernels.int8_attention import _attn_fwd_int8

def assemble(ptx):
    # ptxas for sm_90a: {"ptxas": return code, "ptxas_err": the end of its stderr}
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        done = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", f.name, "-o", "/dev/null"],
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    return dict(ptxas=done.returncode, ptxas_err=done.stderr[-500:])

report = {}
for dtype, head_dim, tactic in (("float16", 64, 1), ("bfloat16", 128, 2)):
    spec = AotAttentionSpec(dtype, head_dim, head_dim ** -0.5, PLUGIN_TACTICS[tactic])
    c = compile_attention(spec)
    entry = c.ptx[c.ptx.index(".entry"):c.ptx.index(")", c.ptx.index(".entry"))]
    report[f"{dtype}-{head_dim}"] = dict(params=entry.count(".param"), int_args=list(c.int_args),
        wgmma="wgmma" in c.ptx, tma="cp.async.bulk.tensor" in c.ptx,
        warps=c.num_warps, shared=c.shared_bytes, **assemble(c.ptx))

def compile_sm90(kernel, pointers, constexprs):
    fn = kernel.fn
    sig = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 8, "num_stages": 3})

ptrs = {n: "*fp16" for n in ("Q", "K", "V", "Q_NORM_W", "K_NORM_W", "Out")}
fused = dict(HEAD_DIM=64, BLOCK_M=128, BLOCK_N=64, HAS_KV_LENS=True, HAS_NORM=True,
             HAS_ROPE=True, INPUT_PRECISION="tf32")
ptrs.update({"COS": "*fp32", "SIN": "*fp32", "KV_LENS": "*i32", "qk_scale": "fp32", "eps": "fp32"})
ptx = compile_sm90(_attn_fwd, ptrs, {**fused, "USE_TMA": False}).asm["ptx"]
report["prologue"] = dict(wgmma="wgmma" in ptx)
# TMA: unit last strides are compile-time 1 there, as the descriptors require
tma = compile_sm90(_attn_fwd, ptrs, {**fused, "USE_TMA": True, "stride_qd": 1, "stride_kd": 1,
                                     "stride_vd": 1, "stride_od": 1})
report["tma"] = dict(loads="cp.async.bulk.tensor" in tma.asm["ptx"],
                     wgmma="wgmma" in tma.asm["ptx"],
                     scratch=tma.metadata.global_scratch_size, **assemble(tma.asm["ptx"]))
ptx = compile_sm90(_attn_fwd_int8, {"Q8": "*i8", "K8": "*i8", "V": "*fp8e4nv", "Out": "*fp16",
                              "Q_SCALE": "*fp32", "K_SCALE": "*fp32", "V_SCALE": "*fp32",
                              "KV_LENS": "*i32"},
             dict(HEAD_DIM=64, BLOCK_M=128, BLOCK_N=64, Q_BLOCK=128, K_BLOCK=64,
                  HAS_KV_LENS=True, PV_FP8=True)).asm["ptx"]
report["int8"] = dict(int8_mma=".s8.s8" in ptx, fp8_mma="e4m3.e4m3" in ptx)
print(json.dumps(report))
"""


@pytest.mark.slow
def test_every_kernel_variant_compiles_to_hopper_ptx_without_a_gpu():
    # a fresh interpreter: TRITON_INTERPRET (set for this process) swaps in the interpreter
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("float16-64", "bfloat16-128"):
        kernel = report[key]
        # exactly what TensorRT passes: 4 inputs, the int32 extra args, 1 output
        assert kernel["params"] == 4 + len(kernel["int_args"]) + 1
        assert kernel["int_args"] == ["stride_qb", "stride_qh", "stride_qm", "stride_kb",
                                      "stride_kh", "stride_kn", "stride_vb", "stride_vh",
                                      "stride_vn", "stride_ob", "stride_oh", "stride_om",
                                      "H", "N_CTX_Q", "N_CTX_KV"]
        assert kernel["ptxas"] == 0, kernel["ptxas_err"]  # the trimmed PTX still assembles
        assert kernel["wgmma"]  # Hopper warpgroup MMA, not the Ampere fallback
        assert not kernel["tma"]  # TensorRT gives no scratch for device-side descriptors
    assert report["prologue"]["wgmma"]
    tma = report["tma"]
    assert tma["loads"] and tma["wgmma"] and tma["ptxas"] == 0, tma["ptxas_err"]
    # device-side descriptors are written to global scratch: why the host installs an
    # allocator before TMA launches
    assert tma["scratch"] > 0
    assert report["int8"]["int8_mma"] and report["int8"]["fp8_mma"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT")
def test_gpu_tensorrt_engine_with_the_aot_plugin_matches_the_kernel(tmp_path):
    import tensorrt as trt

    trt_plugin.register_plugins()
    q, k, v = (torch.randn(2, 8, 300, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    path = tmp_path / "attention.onnx"
    onnx.save(_export(_TwoAttentions().cuda(), (q, k, v, torch.tensor([300, 120], device="cuda",
                                                                       dtype=torch.int32))), path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(network, builder.create_builder_config()))
    context = engine.create_execution_context()
    lens = torch.tensor([300, 120], device="cuda", dtype=torch.int32)
    out = torch.empty_like(q)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name, tensor in zip(names, (q, k, v, lens, out), strict=True):
        context.set_tensor_address(name, tensor.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    expected = _TwoAttentions()(q, k, v, lens)
    # two fp16 attentions summed; the int8 half differs by its quantization (cosine bar)
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(),
                                                expected.double().flatten(), dim=0)
    assert cos >= 0.999
