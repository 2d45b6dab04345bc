"""Integration: custom ops, torch.export, the attention backend registry, cheap import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import cinema_trt.kernels.ops as kernels
from cinema_trt.kernels.ops import Int8Quantization
from cinema_trt.kernels.reference import QKPrologue
from cinema_trt.models import attention as model_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE)


def test_import_is_cheap_and_needs_neither_triton_nor_tensorrt():
    code = ("import sys, cinema_trt.kernels.backends, cinema_trt.kernels.trt_plugin; "
            "bad = [m for m in ('triton', 'tensorrt') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout


def test_backends_are_registered_and_agree_with_sdpa():
    assert {"triton", "triton_int8"} <= set(model_attention.available_backends())
    q, k, v = (_randn(2, 2, 33, 32, seed=i) for i in range(3))
    ref = model_attention.attention(q, k, v, backend="sdpa")
    # fp32 on both sides: rounding-level differences only
    torch.testing.assert_close(model_attention.attention(q, k, v, backend="triton"), ref,
                               rtol=1e-5, atol=1e-5)
    # int8 scores: judged like the kernel tests, by cosine to the exact result
    cos = torch.nn.functional.cosine_similarity(
        model_attention.attention(q, k, v, backend="triton_int8").flatten(), ref.flatten(), dim=0)
    assert cos >= 0.999


class _Attend(torch.nn.Module):
    """Both ops in one graph, with valid lengths and a fused prologue."""

    def forward(self, q, k, v, kv_lens, q_w, k_w):
        fused = kernels.attention(q, k, v, kv_lens=kv_lens, prologue=QKPrologue(q_w, k_w))
        quant = kernels.attention_int8(q, k, v, kv_lens=kv_lens,
                                       quant=Int8Quantization(32, 16))
        return fused + quant


def test_custom_ops_survive_torch_export():
    q, k, v = (_randn(2, 2, 17, 32, seed=i) for i in range(3))
    args = (q, k, v, torch.tensor([17, 9], device=DEVICE), _randn(32, seed=4), _randn(32, seed=5))
    program = torch.export.export(_Attend(), args)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.cinema.attention.default) == 1
    assert targets.count(torch.ops.cinema.attention_int8.default) == 1
    # the exported graph runs the same kernels: identical results
    assert torch.equal(program.module()(*args), _Attend()(*args))


def test_fake_implementations_give_shape_dtype_and_layout_without_running():
    # (B, H, S, D) over (B, S, H, D) memory: non-default strides must carry to the output
    q = torch.empty(2, 40, 3, 64, device="meta", dtype=torch.float16).transpose(1, 2)
    out = kernels.attention(q, q, q)
    out8 = kernels.attention_int8(q, q, q)
    for result in (out, out8):
        assert result.device.type == "meta" and result.shape == q.shape
        assert result.dtype == q.dtype and result.stride() == (7680, 64, 192, 1)


def test_cpu_tensors_without_the_interpreter_fail_clearly(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="need CUDA tensors"):
        kernels.attention(q, q, q)


def test_tuning_filter_drops_configs_that_overflow_shared_memory():
    from cinema_trt.kernels.tuning import (
        INTERPRETER_CONFIG,
        PLUGIN_TACTICS,
        KernelConfig,
        interpreting,
        keep_config,
        search_space,
    )

    deep = KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=4)
    assert keep_config(deep, head_dim=64)  # 144 KiB of fp16 tiles fit in 200 KiB
    assert not keep_config(deep, 128, q_bytes=4, k_bytes=4, v_bytes=4)  # 576 KiB do not
    assert not keep_config(KernelConfig(64, 64, num_warps=8, num_stages=2), 64)  # idle warps
    assert all(keep_config(c, 128) for c in PLUGIN_TACTICS.values())
    if interpreting():  # one config: the interpreter never benchmarks
        assert search_space() == [INTERPRETER_CONFIG]
    else:
        assert len(search_space()) == 36
