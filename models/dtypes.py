"""Every element type the project names, one row each, with every library's spelling of it.

`lookup` takes any spelling (case-insensitive), an ONNX element type number, or a torch /
numpy / TensorRT dtype object. Torch-, numpy- and onnx-free at import (CLI, graph checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DType:
    name: str  # the manifests' spelling (torch's and numpy's; "float8e4m3fn" as ONNX's)
    onnx: int  # onnx.TensorProto element type
    tensorrt: str = ""  # tensorrt.DataType member (engine bindings, builder layer info)
    wire: str = ""  # Triton's datatype in requests ("FP16"); its config type is TYPE_FP16
    safetensors: str = ""  # the safetensors header's dtype
    torch_name: str = ""  # torch's (and ml_dtypes') attribute, where not `name`
    triton_lang: str = ""  # Triton-language scalar type of a kernel pointer (kernels/)
    # width of the arithmetic a layer reading it does (engine reports rank layers by it);
    # 0: not a compute type (indices, masks, shapes)
    bits: int = 0

    @property
    def triton_type(self) -> str:
        """config.pbtxt's data_type ("TYPE_FP16")."""
        if not self.wire:
            raise ValueError(f"dtype {self.name} has no Triton type")
        return "TYPE_STRING" if self.wire == "BYTES" else f"TYPE_{self.wire}"

    @property
    def torch(self) -> Any:
        import torch

        dtype = getattr(torch, self.torch_name or self.name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype {self.name} has no torch equivalent")
        return dtype

    @property
    def numpy(self) -> Any:
        """numpy's dtype; ml_dtypes' for those numpy lacks (bfloat16, float8*)."""
        import numpy as np

        try:
            return np.dtype(object if self.name == "bytes" else self.name)
        except TypeError:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.torch_name or self.name))


DTYPES = (
    DType("float32", 1, "FLOAT", "FP32", "F32", triton_lang="fp32", bits=32),
    DType("float16", 10, "HALF", "FP16", "F16", triton_lang="fp16", bits=16),
    DType("bfloat16", 16, "BF16", "BF16", "BF16", triton_lang="bf16", bits=16),
    DType("float64", 11, "", "FP64", "F64"),
    DType("float8e4m3fn", 17, "FP8", "", "F8_E4M3", "float8_e4m3fn", bits=8),
    DType("float8e4m3fnuz", 18, "", "", "F8_E4M3FNUZ", "float8_e4m3fnuz"),
    DType("float8e5m2", 19, "", "", "F8_E5M2", "float8_e5m2"),
    DType("float8e5m2fnuz", 20, "", "", "F8_E5M2FNUZ", "float8_e5m2fnuz"),
    DType("float8e8m0", 24, "E8M0"),
    DType("float4e2m1", 23, "FP4", bits=4),
    DType("int4", 22, "INT4", bits=4),
    DType("int8", 3, "INT8", "INT8", "I8", bits=8),
    DType("int16", 5, "", "INT16", "I16"),
    DType("int32", 6, "INT32", "INT32", "I32"),
    DType("int64", 7, "INT64", "INT64", "I64"),
    DType("uint8", 2, "UINT8", "UINT8", "U8"),
    DType("uint16", 4, "", "UINT16", "U16"),
    DType("uint32", 12, "", "UINT32", "U32"),
    DType("uint64", 13, "", "UINT64", "U64"),
    DType("bool", 9, "BOOL", "BOOL", "BOOL"),
    DType("complex64", 14, "", "", "C64"),
    DType("complex128", 15),
    DType("uint4", 21),
    DType("bytes", 8, "", "BYTES"),  # ONNX STRING; numpy object arrays on the wire
)
_BY_SPELLING: dict[str | int, DType] = {row.onnx: row for row in DTYPES}
_BY_SPELLING.update({s.lower(): row for row in DTYPES for s in (
    row.name, row.tensorrt, row.wire, row.safetensors, row.torch_name) if s})


def find(value: object) -> DType | None:
    """The row `value` names (see the module docstring), or None."""
    key = value if isinstance(value, int) else str(value).rsplit(".", 1)[-1].strip().lower()
    return _BY_SPELLING.get(key)


def lookup(value: object) -> DType:
    row = find(value)
    if row is None:
        raise ValueError(f"element type {value!r} is unknown; known: {[d.name for d in DTYPES]}")
    return row
