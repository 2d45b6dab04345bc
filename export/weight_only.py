"""Weight-only INT4 (or INT8) quantization of an exported graph, through NVIDIA ModelOpt's ONNX
quantizer: for the MLLM's text graph (models/stages.MLLM_TEXT), whose 12.2 GiB of fp16
weights (cinema) are read once per prefill and whose FP8 recipe fails its gate at paper
width.

What comes out is standard ONNX at opset 21: each quantized GEMM reads its weight through
`DequantizeLinear(int4 weight, scale, axis=0, block_size)`, signed INT4 in blocks of
`block_size` input rows with one scale per block and output column, no zero point.
ONNX Runtime's CPU provider runs it (the gate), TensorRT-RTX builds it into INT4-weight
GEMMs. Not MatMulNBits (a Microsoft-domain op TensorRT-RTX does not build) and not UINT4
with zero points (TensorRT-RTX does not parse it).

Methods (ModelOpt's names): `rtn_dq`, round to nearest per block; `awq_clip`, which
also searches each block's clipping ratio that minimises the GEMM's output error on the
calibration inputs (activation-aware; ~7x RTN's time on a CPU); `awq_lite`, AWQ's
per-channel scaling search. Layers are chosen by module path (the dynamo exporter names
nodes `node_MatMul_82`; their metadata keeps the path, export/fp8.py `linear_module`):
every Linear GEMM with a constant weight, except `exclude` (an LM head, where a graph has
one: its errors land directly on the logits).

Installs: `nvidia-modelopt` plus the four packages of its `[onnx]` extra that the ONNX
quantizer imports (the `quant` extra). Not `nvidia-modelopt[onnx]` itself: it pins onnx
to 1.21 and replaces onnxruntime with onnxruntime-gpu.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from cinema_trt.models.dtypes import lookup
from cinema_trt.models.precision import WEIGHT_FORMATS, WeightFormat, weight_format

from .calibration import ModelOptMissingError
from .fp8 import linear_module
from .onnx_graph import EXTERNAL_DATA_THRESHOLD, initializer_bytes

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

QUANT_INSTALL = 'pip install -e ".[quant]"'
METHODS = ("rtn_dq", "awq_clip", "awq_lite")
INT4 = onnx.TensorProto.INT4
INT4_OPSET = 21  # the first opset with INT4 and blocked DequantizeLinear
# weight element type (ONNX) -> bits, from the weight-only formats
BITS = {lookup(f.element).onnx: f.bits for f in WEIGHT_FORMATS}
PREFERRED_BLOCK = 128  # ModelOpt's default and the record's paper-width measurement


@dataclass(frozen=True)
class WeightOnlyConfig:
    method: str = "awq_clip"
    # input rows per scale; must divide each GEMM's input width (0: `fitting_block`)
    block_size: int = PREFERRED_BLOCK
    # 8: INT8 weights, one scale per output column (ModelOpt's mixed mode with every layer
    # INT8; block_size is then unused): twice INT4's bytes, far less rounding
    bits: int = 4
    exclude: tuple[str, ...] = (r"(.*\.)?lm_head",)  # module-path regexes kept in float

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; choose one of {list(METHODS)}")
        if self.block_size and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block_size={self.block_size} must be a power of two >= 16 "
                             f"(or 0: the largest up to {PREFERRED_BLOCK} that fits)")
        if self.bits not in (4, 8):
            raise ValueError(f"bits={self.bits}; choose 4 (block-wise) or 8 (per channel)")


    @property
    def format(self) -> WeightFormat:
        return next(f for f in WEIGHT_FORMATS if f.bits == self.bits)

    @classmethod
    def of(cls, format_name: str, method: str, block_size: int,
           exclude: tuple[str, ...]) -> WeightOnlyConfig:
        """The config of a weight-only format by name (int4 | int8)."""
        return cls(method=method, block_size=block_size, bits=weight_format(format_name).bits,
                   exclude=exclude)


def fitting_block(onnx_path: str | os.PathLike, preferred: int = PREFERRED_BLOCK) -> int:
    """The largest power-of-two block size up to `preferred` (and at least 16) that
    divides the input width of every Linear GEMM of the graph: 128 at paper width, 32 for
    tiny's 64-wide text model. ValueError when none does."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    rows = {t.name: t.dims[0] for t in model.graph.initializer if t.dims}
    gemms = linear_gemms(model)  # their weights are (input width, output width)
    widths = {rows[node.input[1]] for node in model.graph.node if node.name in gemms}
    block = preferred
    while block >= 16 and any(w % block for w in widths):
        block //= 2
    if block < 16:
        raise ValueError(f"{onnx_path}: no block size of 16 or more divides the GEMM input "
                         f"widths {sorted(widths)}; use --weight-only int8 (per channel)")
    return block


@dataclass(frozen=True)
class WeightOnlyResult:
    path: Path
    quantized: tuple[str, ...]  # module paths of the GEMMs whose weights are INT4
    excluded: tuple[str, ...]  # module paths kept in float by `exclude`
    weight_bytes: tuple[int, int]  # initializer bytes before and after
    seconds: float
    block_size: int = 0  # input rows per INT4 scale (0: INT8, per channel)


def emulate_rtn(module: torch.nn.Module, layers: Sequence[str], config: WeightOnlyConfig
                ) -> torch.nn.Module:
    """A copy of `module` whose Linear `layers` (module paths) have their weights rounded to
    nearest in `config`'s format, symmetric: blocks of `block_size` input rows with scale
    amax / 7 (INT4), or whole input rows with amax / 127 (INT8). What a quantized graph's
    error is held to (export/check.py): the rounding it cannot avoid, in torch fp32."""
    import copy

    import torch

    top = 2 ** (config.bits - 1) - 1
    emulated = copy.deepcopy(module)
    with torch.no_grad():
        for name in layers:
            linear = emulated.get_submodule(name)
            assert isinstance(linear, torch.nn.Linear), f"{name} is not a Linear layer"
            weight = linear.weight  # (out, in)
            out, width = weight.shape
            block = config.block_size if config.bits == 4 else width
            blocks = weight.reshape(out, width // block, block)
            scale = blocks.abs().amax(-1, keepdim=True).clamp(min=1e-12) / top
            weight.copy_((torch.round(blocks / scale).clamp(-top - 1, top) * scale
                          ).reshape(out, width))
    return emulated


def linear_gemms(model: onnx.ModelProto) -> dict[str, str]:
    """{GEMM node name: Linear module path} for GEMMs whose weight is an initializer."""
    constants = {t.name for t in model.graph.initializer}
    return {node.name: layer for node in model.graph.node
            if (layer := linear_module(node)) is not None and node.input[1] in constants}


def quantized_gemms(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """{GEMM node name: (bits, block size; 0 per channel)} of GEMMs that read an INT4 or
    INT8 weight through DequantizeLinear. By node name: the quantizer keeps names but drops
    node metadata."""
    bits = {t.name: BITS[t.data_type] for t in model.graph.initializer if t.data_type in BITS}
    dequantized = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in bits:
            block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
            dequantized[node.output[0]] = (bits[node.input[0]], block)
    return {node.name: dequantized[node.input[1]] for node in model.graph.node
            if node.op_type in ("MatMul", "Gemm") and node.input[1] in dequantized}


def _reader(batches: Sequence[Mapping[str, np.ndarray]]):
    """The batches as an ONNX Runtime CalibrationDataReader, each fed to the graph as it
    is: ModelOpt's own provider would split every input along axis 0 (the text
    graph's position_ids are (3, B, S))."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([dict(b) for b in batches])

        def get_next(self):
            return next(self._batches, None)

    return Batches()


def import_quantizer():
    """ModelOpt's ONNX `quantize`, or ModelOptMissingError with the install command."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as error:
        raise ModelOptMissingError(f"weight-only quantization needs NVIDIA ModelOpt's ONNX "
                                   f"quantizer ({error}); install it with: "
                                   f"{QUANT_INSTALL}") from None
    return quantize


def quantize_weight_only(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                         calibration: Sequence[Mapping[str, np.ndarray]],
                         config: WeightOnlyConfig = WeightOnlyConfig()) -> WeightOnlyResult:
    """Write the INT4 weight-only version of the graph at `onnx_path` to `out_path`.

    calibration: batches of the graph's inputs ({input name: array} each), the activations
    AWQ weighs the weight error by (realistic ones: the token embeddings of in-vocabulary
    ids for the text graph, models/mllm_split.text_calibration). RTN does not read them.
    """
    quantize = import_quantizer()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not config.block_size:
        config = dataclasses.replace(config, block_size=fitting_block(onnx_path))
    source = onnx.load(str(onnx_path))
    source_bytes = initializer_bytes(source)
    gemms = linear_gemms(source)
    patterns = [re.compile(p) for p in config.exclude]
    excluded = {n: layer for n, layer in gemms.items()
                if any(p.fullmatch(layer) for p in patterns)}
    if not gemms:
        raise ValueError(f"{onnx_path}: no Linear GEMM with module metadata; export it with "
                         f"export/onnx_graph.trace_to_onnx (dynamo)")
    inputs = {i.name for i in source.graph.input}
    for batch in calibration:
        if set(batch) != inputs:
            raise ValueError(f"a calibration batch holds {sorted(batch)}, the graph takes "
                             f"{sorted(inputs)}")
    if not calibration:
        raise ValueError("calibration needs at least one batch of the graph's inputs")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    wanted = [n for n in gemms if n not in excluded]
    # node names are matched as regexes (re.match): anchor and escape them; layers_8bit
    # matches whole dot-separated tokens, which our node names are
    eight = ({"enable_mixed_quant": True, "layers_8bit": ",".join(wanted)}
             if config.bits == 8 else {})
    quantize(str(onnx_path), quantize_mode="int4", calibration_method=config.method,
             calibration_data_reader=_reader(calibration), calibration_eps=["cpu"],
             block_size=config.block_size, output_path=str(out_path),
             nodes_to_exclude=[f"^{re.escape(n)}$" for n in excluded] or None,
             use_external_data_format=source_bytes > EXTERNAL_DATA_THRESHOLD,
             log_level="WARNING", **eight)
    seconds = time.perf_counter() - start
    result = onnx.load(str(out_path))
    done = quantized_gemms(result)
    layers = [gemms[n] for n in wanted if n in done and done[n][0] == config.bits]
    missing = sorted(set(gemms[n] for n in wanted) - set(layers))
    if missing:
        raise RuntimeError(f"{out_path}: the quantizer left {missing} outside INT"
                           f"{config.bits} (block_size {config.block_size} must divide each "
                           f"GEMM's input width)")
    log.info("%s: %d GEMMs INT%d (%s, block %d), %d kept in float, %.1f s", out_path,
             len(layers), config.bits, config.method, config.block_size, len(excluded),
             seconds)
    return WeightOnlyResult(out_path, tuple(sorted(layers)), tuple(sorted(excluded.values())),
                            (source_bytes, initializer_bytes(result)), seconds,
                            config.block_size if config.bits == 4 else 0)
