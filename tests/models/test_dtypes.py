"""The one dtype table (models/dtypes.py): every spelling in it is the library's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cinema_trt.models.dtypes import DTYPES, find, lookup


@pytest.mark.parametrize("row", DTYPES, ids=lambda d: d.name)
def test_any_spelling_finds_the_row(row):
    spellings = [row.name, row.tensorrt, row.wire, row.safetensors, row.torch_name]
    for spelling in filter(None, spellings):
        assert lookup(spelling) is row and lookup(spelling.lower()) is row
    assert lookup(row.onnx) is row


def test_dtype_objects_are_looked_up_by_their_own_spelling():
    assert lookup(torch.float8_e4m3fn).name == "float8e4m3fn"
    assert lookup(torch.bfloat16).safetensors == "BF16"
    assert lookup(np.dtype("int64")).triton_type == "TYPE_INT64"
    assert lookup("BYTES").triton_type == "TYPE_STRING"
    assert find("float128") is None
    with pytest.raises(ValueError, match=r"element type 'float128' is unknown; known: "):
        lookup("float128")
    with pytest.raises(ValueError, match="float4e2m1 has no torch equivalent"):
        _ = lookup("FP4").torch
    with pytest.raises(ValueError, match="float8e4m3fn has no Triton type"):
        _ = lookup("FP8").triton_type


def test_onnx_numbers_are_onnx_tensorproto_types():
    from onnx import TensorProto, helper

    for row in DTYPES:
        onnx_name = TensorProto.DataType.Name(row.onnx).lower()
        if onnx_name != row.name:  # FLOAT, DOUBLE, FLOAT16, STRING: compare as numpy types
            assert np.dtype(helper.tensor_dtype_to_np_dtype(row.onnx)) == row.numpy, row


def test_torch_and_numpy_columns_name_real_dtypes():
    for row in DTYPES:
        if row.safetensors:  # every type a checkpoint stores is a torch type
            assert isinstance(row.torch, torch.dtype)
    for row in DTYPES:
        if row.name not in ("float8e8m0", "float4e2m1", "int4"):
            assert row.numpy.itemsize in (1, 2, 4, 8, 16), row


def test_safetensors_names_are_what_safetensors_writes(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    rows = [row for row in DTYPES if row.safetensors]
    save_file({row.name: torch.zeros(2, dtype=row.torch) for row in rows},
              str(tmp_path / "all.safetensors"))
    with safe_open(tmp_path / "all.safetensors", "pt") as f:
        written = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    assert written == {row.name: row.safetensors for row in rows}


def test_tensorrt_names_are_datatype_members(require):
    trt = require("tensorrt_rtx", "pip install tensorrt-rtx-cu12 (in the test extra)")
    rows = [row for row in DTYPES if row.tensorrt]
    assert {row.tensorrt for row in rows} == set(trt.DataType.__members__)
    for row in rows:
        assert lookup(getattr(trt.DataType, row.tensorrt)) is row


def test_triton_names_round_trip_through_tritonclient(require):
    utils = require("tritonclient.utils", "pip install 'cinema-trt[serve]'")
    pb = require("tritonclient.grpc.model_config_pb2", "pip install 'cinema-trt[serve]'")
    for row in DTYPES:
        if not row.wire:
            continue
        assert pb.DataType.Value(row.triton_type) > 0
        assert utils.np_to_triton_dtype(row.numpy) == row.wire
        assert np.dtype(utils.triton_to_np_dtype(row.wire)) == row.numpy
