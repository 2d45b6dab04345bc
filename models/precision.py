"""The precision policy: what an engine computes in, who builds it, and why, in one place.

The export (`--dtype`, `--fp8`) fixes the graph's types and strongly typed builds keep
them; the README's precision table is POLICIES, rendered. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Precision(str, Enum):
    """Numeric format of a graph's compute; POLICIES says what each one means."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"precision={value!r} is not supported; choose one of "
                             f"{[p.value for p in cls]}") from None


@dataclass(frozen=True)
class Policy:
    precision: Precision
    compute: str  # the graph's arithmetic dtype (models/dtypes.py); fp8: "", its base's
    min_sm: int  # oldest GPU architecture with hardware for it (TensorRT targets); 0: any
    ort: bool  # `cinema-trt build --runtime ort` (ONNX Runtime's CPU provider) builds it
    weak_flag: str  # TensorRT 10's BuilderFlag for a weakly typed build of an fp32 graph
    why: str
    min_opset: int = 0  # bf16: 22, whose Conv takes bf16; else the exporter's 19 (TensorRT 10)
    quantized: str = ""  # the Q/DQ element type of the recipe's Linear layers (export/fp8.py)


# why ONNX Runtime does not run bf16 graphs (every refusal of one says it this way)
ORT_NO_BF16 = "ONNX Runtime's CPU provider has no bfloat16 kernels"
POLICIES = (
    Policy(Precision.FP32, "float32", 0, True, "", "the reference"),
    Policy(Precision.FP16, "float16", 0, True, "FP16", "tensor-core speed at half the "
           "memory; ORT's CPU provider runs it through casts around ops without fp16 kernels"),
    Policy(Precision.BF16, "bfloat16", 80, False, "BF16", "fp32's range at fp16's cost; bf16 "
           f"tensor cores from Ampere; {ORT_NO_BF16}", min_opset=22),
    Policy(Precision.FP8, "", 89, False, "", "FP8 tensor cores from Ada; TensorRT runs FP8 "
           "only through explicit Q/DQ, which a strongly typed build keeps",
           quantized="float8e4m3fn"),
)
EXPORT_PRECISIONS = tuple(p.precision for p in POLICIES if p.compute)  # export --dtype
ORT_PRECISIONS = tuple(p.precision for p in POLICIES if p.ort)


@dataclass(frozen=True)
class WeightFormat:
    """A weight-only format (`cinema-trt export --weight-only`, export/weight_only.py): the
    GEMMs of a graph's `weight_only` recipes (models/stage.py, keyed by these) read their
    weights as integers through DequantizeLinear and compute in the export's dtype, so the
    graph keeps its precision (fp16, say) and only its weights shrink."""

    name: str  # the option's value (`weight_format` looks it up)
    bits: int
    element: str  # ONNX element type of the stored weights (models/dtypes.py spelling)
    scales: str  # what one scale covers ("one scale per <scales>": manifest, CLI help)
    why: str


INT4_WEIGHTS = WeightFormat(
    "int4", 4, "int4", "block of input rows (--weight-only-block) of one output column; "
    "signed, no zero point", "a quarter of fp16's weight bytes: what a prefill that reads "
    "every weight once is bounded by")
INT8_WEIGHTS = WeightFormat("int8", 8, "int8", "output column", "half of fp16's weight "
                            "bytes, with far less rounding than INT4")
WEIGHT_FORMATS = (INT4_WEIGHTS, INT8_WEIGHTS)


def weight_format(name: str) -> WeightFormat:
    """The weight-only format `name` (int4 | int8); ValueError naming them otherwise."""
    for format_ in WEIGHT_FORMATS:
        if format_.name == name:
            return format_
    raise ValueError(f"weight-only format {name!r} is not supported; choose one of "
                     f"{[f.name for f in WEIGHT_FORMATS]}")


def policy(precision: str | Precision) -> Policy:
    return POLICIES[list(Precision).index(Precision.parse(precision))]


def parse_dtype(value: str | Precision) -> Precision:
    """An export's --dtype: fp32 | fp16 | bf16; ValueError otherwise."""
    precision = Precision.parse(value)
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"dtype={precision.value!r} is not a compute dtype; choose one of "
                         f"{[p.value for p in EXPORT_PRECISIONS]} (FP8 is --fp8, on top of one)")
    return precision


def compute_dtype(precision: str | Precision) -> str:
    """What a graph exported with --dtype `precision` computes in ("float16")."""
    return policy(parse_dtype(precision)).compute


def precision_for(compute: str) -> Precision:
    """A graph's compute dtype ("float16") -> the export's --dtype (Precision.FP16)."""
    for p in POLICIES:
        if p.compute and p.compute == compute:
            return p.precision
    raise ValueError(f"compute dtype {compute!r} is none of "
                     f"{[p.compute for p in POLICIES if p.compute]}")


def strong_typing_reasons(compute: str, has_qdq: bool, weight_streaming: bool,
                          weak_typing: bool) -> list[str]:
    """Why a TensorRT build of a graph computing in `compute` is strongly typed (every
    type taken from the graph); empty: weakly typed, which only TensorRT 10 still has."""
    return [why for why, on in ((f"the graph computes in {compute}", compute != "float32"),
                                ("it has Q/DQ nodes", has_qdq),
                                ("weight streaming needs it", weight_streaming),
                                ("TensorRT >= 11 and TensorRT-RTX build nothing else",
                                 not weak_typing)) if on]
