"""What a stage model accepts, checked at its boundary before any work is done.

Triton checks a request against `config.pbtxt` (dtype, rank, fixed dims, byte size), but
a symbolic dim is `-1`: any length. A stage is reachable over gRPC by anyone who can
reach the server, so `execute` bounds every declared dim BEFORE touching the data (from
the stage spec and the request limits of models/pipeline.py: the largest video, the
longest prompt, the most references one accepted `cinema` request can make), then checks
values for meaning: non-finite floats, masks that are not 0/1 or attend to nothing,
token ids outside the vocabulary. Failures are `InvalidInput` (400 / INVALID_ARGUMENT),
naming the input, the limit and where it comes from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch

from cinema_trt.engines.shapes import SUBJECT_TOKENS, TEMPLATE_TOKENS, VISION_MARKERS
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec, image_tokens
from cinema_trt.models.stage import Request
from cinema_trt.models.stages import STAGES

# frames*height*width of the largest video (models/pipeline.py MAX_VIDEO_PIXELS; that module
# imports transformers, which a non-MLLM stub must not pay for: test_stage_imports.py)
MAX_VIDEO_PIXELS = 2 ** 27
# the unconditional prompt has no images: the MLLM gets 0 patches and 0 image grids
MIN_ZERO = frozenset({"patches", "images"})
# a byte-level BPE token covers at least one UTF-8 byte, and a character is at most 4
MAX_TOKENS_PER_CHAR = 4


class InvalidInput(ValueError):
    """A request a stage refuses: the client's fault (400), not the stage's."""


def symbol_limits(config: CinemaConfig) -> dict[str, int]:
    """The largest value each symbolic dim of the stages' specs takes for a request
    the `cinema` model accepts (models/pipeline.py caps; engines/shapes.py token counts):
    every stage's symbols for the largest request (Graph.symbols: the DiT's CFG batch, the
    MLLM's images, ...). Computed when the repository is
    built (it imports models/pipeline.py, and so transformers); stage models read the
    result from their config.pbtxt."""
    from cinema_trt.models.pipeline import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SIDE

    refs = min(config.mllm.max_refs, config.dit.max_refs)
    per_image = image_tokens(config, config.mllm.max_pixels) + VISION_MARKERS + SUBJECT_TOKENS
    largest = Request(batch=1, frames=MAX_FRAMES, height=MAX_SIDE, width=MAX_SIDE, refs=refs,
                      seq=TEMPLATE_TOKENS + MAX_TOKENS_PER_CHAR * MAX_PROMPT_CHARS
                      + refs * per_image, images=refs, image_pixels=config.mllm.max_pixels,
                      cfg=True)
    limits: dict[str, int] = {}
    for stage in STAGES:
        for symbol, value in stage.symbols(largest, config).items():
            limits[symbol] = max(limits.get(symbol, 0), value)
    return limits


def limits_parameter(config: CinemaConfig) -> str:
    """`symbol_limits` as the string of a config.pbtxt parameter."""
    return json.dumps(symbol_limits(config), sort_keys=True)


def parse_limits(text: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(text).items()}


def check_declared(spec: StageSpec, shapes: Mapping[str, Sequence[int]],
                   limits: Mapping[str, int]) -> None:
    """Every input's declared shape: its rank, fixed dims, each symbolic dim in
    1..limit, and one value per symbol across inputs. Only shapes are read, no data."""
    values: dict[str, tuple[str, int]] = {}
    for tensor in spec.inputs:
        shape = [int(d) for d in shapes[tensor.name]]
        where = f"{spec.name}: input {tensor.name!r} declares shape {shape}"
        if len(shape) != len(tensor.dims):
            raise InvalidInput(f"{where}; it must have {len(tensor.dims)} dims {tensor.dims}")
        for axis, (got, dim) in enumerate(zip(shape, tensor.dims, strict=True)):
            if isinstance(dim, int):
                if got != dim:
                    raise InvalidInput(f"{where}; dim {axis} must be {dim}")
                continue
            low, limit = (0 if dim in MIN_ZERO else 1), limits[dim]
            if not low <= got <= limit:
                raise InvalidInput(
                    f"{where}; dim {axis} ({dim}) must be in {low}..{limit} (the largest a "
                    f"request the 'cinema' model accepts can need)")
            first = values.setdefault(dim, (tensor.name, got))
            if first[1] != got:
                raise InvalidInput(f"{where}; dim {axis} ({dim}) is {got}, but {first[1]} in "
                                   f"input {first[0]!r}: they must agree")
    pixels = [values[d][1] for d in ("frames", "height", "width") if d in values]
    if len(pixels) == 3 and math.prod(pixels) > MAX_VIDEO_PIXELS:
        raise InvalidInput(f"{spec.name}: frames*height*width={'*'.join(map(str, pixels))} "
                           f"exceeds the maximum of {MAX_VIDEO_PIXELS} pixels")


def check_values(spec: StageSpec, inputs: Mapping[str, torch.Tensor],
                 vocab_size: int | None = None) -> None:
    """Meaning: floats finite, masks 0/1 with a token attended per row, ids in the vocab."""
    for name, tensor in inputs.items():
        where = f"{spec.name}: input {name!r}"
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise InvalidInput(f"{where} holds {bad} non-finite values (NaN or +-Inf; "
                                   "FP32 overflows to Inf above 3.4e38)")
        elif name.endswith("attention_mask"):
            _check_mask(where, tensor)
        elif name == "input_ids" and vocab_size is not None:
            low, high = int(tensor.min()), int(tensor.max())
            if low < 0 or high >= vocab_size:
                raise InvalidInput(f"{where} holds token ids in [{low}, {high}]; the "
                                   f"vocabulary is 0..{vocab_size - 1}")


def _check_mask(where: str, mask: torch.Tensor) -> None:
    odd = mask[(mask != 0) & (mask != 1)]
    if odd.numel():
        shown = sorted({int(v) for v in odd.flatten()[:8]})
        raise InvalidInput(f"{where} must hold only 0 and 1, got {shown}")
    empty = (mask.reshape(mask.shape[0], -1).sum(dim=1) == 0).nonzero().flatten()
    if empty.numel():
        raise InvalidInput(f"{where}: row {int(empty[0])} is all zero; at least one token "
                           "must be attended")
