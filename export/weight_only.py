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

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from .fp8 import linear_module
from .onnx_graph import EXTERNAL_DATA_THRESHOLD, initializer_bytes

log = logging.getLogger(__name__)

QUANT_INSTALL = 'pip install -e ".[quant]"'
METHODS = ("rtn_dq", "awq_clip", "awq_lite")
INT4 = onnx.TensorProto.INT4
INT4_OPSET = 21  # the first opset with INT4 and blocked DequantizeLinear
BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.INT8: 8}  # weight element type -> bits


@dataclass(frozen=True)
class WeightOnlyConfig:
    method: str = "awq_clip"
    block_size: int = 128  # input rows per scale; must divide each GEMM's input width
    # 8: INT8 weights, one scale per output column (ModelOpt's mixed mode with every layer
    # INT8; block_size is then unused): twice INT4's bytes, far less rounding
    bits: int = 4
    exclude: tuple[str, ...] = (r"(.*\.)?lm_head",)  # module-path regexes kept in float

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; choose one of {list(METHODS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size} must be a power of two >= 16")
        if self.bits not in (4, 8):
            raise ValueError(f"bits={self.bits}; choose 4 (block-wise) or 8 (per channel)")


@dataclass(frozen=True)
class WeightOnlyResult:
    path: Path
    quantized: tuple[str, ...]  # module paths of the GEMMs whose weights are INT4
    excluded: tuple[str, ...]  # module paths kept in float by `exclude`
    weight_bytes: tuple[int, int]  # initializer bytes before and after
    seconds: float


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


def text_calibration(embed_weight: torch.Tensor, batch: int, seq: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Text-graph inputs of `batch` prompts of `seq` random in-vocabulary tokens: their rows
    of the token-embedding table (what the glue feeds the graph), a full mask and text
    positions on all three M-RoPE rows."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, embed_weight.shape[0], (batch, seq), generator=generator)
    return {"inputs_embeds": embed_weight[ids].float().numpy(),
            "attention_mask": np.ones((batch, seq), dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(seq), (3, batch, seq)).copy()}


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


def _modelopt():
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as error:
        raise ImportError(f"weight-only quantization needs NVIDIA ModelOpt's ONNX quantizer "
                          f"({error}); install it with: {QUANT_INSTALL}") from None
    return quantize


def quantize_weight_only(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                         calibration: Sequence[Mapping[str, np.ndarray]],
                         config: WeightOnlyConfig = WeightOnlyConfig()) -> WeightOnlyResult:
    """Write the INT4 weight-only version of the graph at `onnx_path` to `out_path`.

    calibration: batches of the graph's inputs ({input name: array} each), the activations
    AWQ weighs the weight error by (realistic ones: the token embeddings of in-vocabulary
    ids for the text graph, `text_calibration`). RTN does not read them.
    """
    quantize = _modelopt()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
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
                            (source_bytes, initializer_bytes(result)), seconds)
