"""The precision policy (models/precision.py) answers "what does this engine compute in, and
why"; the README's precision table is that policy, rendered."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinema_trt.models.backends import BACKENDS
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import (
    EXPORT_PRECISIONS,
    ORT_PRECISIONS,
    POLICIES,
    Precision,
    compute_dtype,
    parse_dtype,
    policy,
    precision_for,
)

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = ("| precision | export | graph computes in | `build --runtime ort` "
          "| TensorRT, TensorRT-RTX | weakly typed (TensorRT 10 only) | why |")


def render_table() -> list[str]:
    lines = [HEADER, "|---|---|---|---|---|---|---|"]
    bases: dict[Precision, list[str]] = {}
    for backend in BACKENDS.values():
        bases.setdefault(backend.base, []).append(backend.name)
    for p in POLICIES:
        if p.compute:
            export, compute = f"`--dtype {p.precision.value}`", f"`{p.compute}`"
        else:
            export = " or ".join(f"`--fp8 --dtype {base.value}` ({', '.join(runtimes)})"
                                 for base, runtimes in bases.items())
            compute = f"`{p.quantized}` Q/DQ in the recipe's linear layers, the base elsewhere"
        targets = f"sm{p.min_sm}+" if p.min_sm else "every target"
        weak = f"an fp32 export with `BuilderFlag.{p.weak_flag}`" if p.weak_flag else "-"
        why = f"{p.why}; exported at opset {p.min_opset}" if p.min_opset else p.why
        lines.append(f"| {p.precision.value} | {export} | {compute} | "
                     f"{'yes' if p.ort else 'no'} | {targets} | {weak} | {why} |")
    return lines


def test_readme_table_is_the_policy():
    readme = README.read_text().splitlines()
    assert HEADER in readme, f"README.md lost its precision table; put back:\n{render_table()}"
    start = readme.index(HEADER)
    table = readme[start:start + len(POLICIES) + 2]
    assert table == render_table(), "\n".join(["README.md must show:", *render_table()])


def test_every_precision_has_one_policy():
    """policy() indexes POLICIES in Precision's order."""
    assert [policy(p).precision for p in Precision] == list(Precision)
    assert EXPORT_PRECISIONS == (Precision.FP32, Precision.FP16, Precision.BF16)
    assert ORT_PRECISIONS == (Precision.FP32, Precision.FP16)


def test_compute_dtypes_are_table_types_and_invert():
    for precision in EXPORT_PRECISIONS:
        dtype = lookup(compute_dtype(precision))
        assert "float" in dtype.name and precision_for(dtype.name) is precision
    assert lookup(policy("fp8").quantized).onnx == 17  # onnx.TensorProto.FLOAT8E4M3FN
    with pytest.raises(ValueError, match=r"dtype='fp8' is not a compute dtype.*--fp8"):
        compute_dtype("fp8")
    with pytest.raises(ValueError, match=r"compute dtype 'int8' is none of"):
        precision_for("int8")


@pytest.mark.parametrize(("value", "message"), [
    ("fp8", r"dtype='fp8' is not a compute dtype; choose one of \['fp32', 'fp16', 'bf16'\]"),
    ("int4", r"precision='int4' is not supported"),
])
def test_parse_dtype_takes_export_precisions_only(value, message):
    assert parse_dtype("bf16") is Precision.BF16
    with pytest.raises(ValueError, match=message):
        parse_dtype(value)
