"""`model_warmup` for the stage models: the server reports a stage ready only after one real
execution at the shapes of a request at the preset's defaults, so the first client does
not pay for lazy initialization (allocator growth, kernel selection, torch's first call).
In the shared layout the `cinema` model runs the same request through each of its runners
before its `initialize` returns (`warmup_inputs`, serving/layouts.py).

Warm-up inputs must pass the stage's own boundary checks (serving/stage_checks.py): float
inputs are zeros, masks are ones, token ids are small ids inside the vocabulary; the
MLLM runs text only (0 images), as the unconditional pass of every request does. Files
Triton reads for warm-up live in `<model>/warmup/` (raw little-endian bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cinema_trt.models.backends import ORT, TORCH
from cinema_trt.models.dtypes import lookup
from cinema_trt.models.presets import CinemaConfig
from cinema_trt.models.specs import StageSpec
from cinema_trt.models.stage import Request, Stage

WARMUP_FOLDER = "warmup"  # Triton looks for input_data_file here, under the model folder
# runtimes whose stages accept any size: engines (TensorRT plans, or the onnxruntime and
# tensorrt backends) are built for a profile that may not hold the preset's default size
WARMUP_RUNTIMES = (TORCH, ORT.name)
WARMUP_TOKENS = 16


def warmup_request(config: CinemaConfig) -> Request:
    """One request at the sampler's defaults: one reference, a short text-only MLLM call
    (as the unconditional pass of every request is), CFG on."""
    s = config.sampler
    return Request(batch=1, frames=s.frames, height=s.height, width=s.width, refs=1,
                   seq=WARMUP_TOKENS, images=0, image_pixels=0, cfg=True)


def warmup_arrays(config: CinemaConfig, stage: Stage) -> dict[str, np.ndarray | None]:
    """The data of each input; None means zeros (Triton's `zero_data`)."""
    arrays: dict[str, np.ndarray | None] = {}
    for name, shape in stage.shapes(warmup_request(config), config).items():
        if name.endswith("attention_mask"):
            arrays[name] = np.ones(shape, np.int64)
        elif name == "input_ids":
            arrays[name] = (np.arange(np.prod(shape), dtype=np.int64) % config.mllm.vocab_size
                            ).reshape(shape)
        else:
            arrays[name] = None
    return arrays


def add_warmup(pbtxt, model_dir: Path, config: CinemaConfig, stage: Stage,
               spec: StageSpec) -> None:
    """One warm-up request in the ModelConfig `pbtxt` of `stage` served as `spec` (its
    `exported_spec`: the types its graph takes); data files under `model_dir`."""
    from cinema_trt.serving.triton_config import model_config_pb2

    Input = model_config_pb2().ModelWarmup.Input
    shapes = stage.shapes(warmup_request(config), config)
    arrays = warmup_arrays(config, stage)
    warmup = pbtxt.model_warmup.add(name="first_request", batch_size=1, count=1)
    for tensor in spec.inputs:
        kind = {"data_type": lookup(tensor.dtype).triton_type, "dims": shapes[tensor.name]}
        data = arrays[tensor.name]
        if data is None:
            warmup.inputs[tensor.name].CopyFrom(Input(**kind, zero_data=True))
            continue
        path = model_dir / WARMUP_FOLDER / tensor.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.astype(data.dtype.newbyteorder("<")).tobytes())
        warmup.inputs[tensor.name].CopyFrom(Input(**kind, input_data_file=tensor.name))


def warmup_inputs(config: CinemaConfig, stage: Stage, spec: StageSpec
                  ) -> dict[str, torch.Tensor]:
    """The warm-up request as tensors of `spec` (the types the runner's graph takes), for
    a runner called in-process (shared layout)."""
    shapes = stage.shapes(warmup_request(config), config)
    arrays = warmup_arrays(config, stage)
    return {t.name: torch.zeros(shapes[t.name], dtype=t.dtype) if arrays[t.name] is None
            else torch.from_numpy(arrays[t.name]) for t in spec.inputs}
