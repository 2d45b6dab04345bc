"""Fixtures for the kernel tests: a fix for the Triton 3.9 interpreter's bf16 `tl.dot`.

The interpreter stores bfloat16 tensors as their uint16 bit patterns (numpy has no
bfloat16) and its `create_dot` hands those arrays straight to `np.matmul`, so a bf16 dot
multiplies bit patterns as integers (`test_interpreter_bf16_dot_is_still_broken` keeps
the minimal reproduction). Casts to and from bf16 are correct; only the dot is not.
"""

from __future__ import annotations

import os

import numpy as np
import pytest


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32 values, exactly (bf16 is fp32's top half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@pytest.fixture
def exact_bf16_interpreter_dot(monkeypatch):
    """Make the interpreter's bf16 dot decode its operands to fp32 first.

    Faithful to the GPU, not an approximation: a bf16 x bf16 product has 16 significant
    bits and is exact in fp32, and Hopper's MMA accumulates bf16 products in fp32, so
    only the summation order can differ. Everything else in a bf16 kernel (loads, the
    prologue's casts, P rounded to bf16 before P.V, the store) still runs unpatched.
    A no-op outside the interpreter.
    """
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    create_dot = InterpreterBuilder.create_dot

    def decode(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        return TensorHandle(bf16_bits_to_float32(x.data), tl.float32)

    def exact_create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, decode(a), decode(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", exact_create_dot)
