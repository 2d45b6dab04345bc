"""One declarative I/O spec per graph: tensor names, dtypes and symbolic dims, written once.

Each stage writes its spec in its own file (models/stage_*.py); the PyTorch modules'
forward signatures, the ONNX dynamic axes, TensorRT profiles, Triton `config.pbtxt` dims
and sample inputs are all derived from it. A dim is an int (fixed by the preset) or a
symbol; `Dim` gives a symbol's min/opt/max. Torch-free at import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .presets import CinemaConfig, latent_frames, latent_size

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    dims: tuple[int | str, ...]  # ints are fixed, strings are symbolic


def f32(name: str, dims: tuple[int | str, ...]) -> TensorSpec:
    """A float32 tensor: every float input and output of a graph, whatever it computes in."""
    import torch

    return TensorSpec(name, torch.float32, dims)


def i64(name: str, dims: tuple[int | str, ...]) -> TensorSpec:
    """An int64 tensor: token ids, masks, positions, image grids."""
    import torch

    return TensorSpec(name, torch.int64, dims)


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class Dim:
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self}")


def video_dims(config: CinemaConfig, frames: int, height: int, width: int,
               refs: int) -> dict[str, int]:
    """Concrete values of the video-related symbols for one request."""
    lh, lw = latent_size(height, width, config.dit)
    return {"frames": frames, "lframes": latent_frames(frames), "height": height,
            "width": width, "lheight": lh, "lwidth": lw, "refs": refs}


def image_patches(config: CinemaConfig, pixels: int) -> int:
    """Vision-tower patch rows (`pixel_values`) for one image resized to `pixels` pixels."""
    return pixels // config.mllm.patch_size ** 2  # one temporal patch: images are repeated


def image_tokens(config: CinemaConfig, pixels: int) -> int:
    """LLM tokens one image becomes (patches merged spatial_merge_size^2 to one)."""
    return image_patches(config, pixels) // config.mllm.spatial_merge_size ** 2


def resolve(spec: TensorSpec, values: Mapping[str, int]) -> tuple[int, ...]:
    """Concrete shape of `spec` given values for its symbols."""
    missing = [d for d in spec.dims if isinstance(d, str) and d not in values]
    if missing:
        raise KeyError(f"{spec.name}: no value for dims {missing}")
    return tuple(d if isinstance(d, int) else values[d] for d in spec.dims)


def tensor_bytes(specs: Iterable[TensorSpec], values: Mapping[str, int] | None = None) -> int:
    """Bytes of the tensors `specs` describe, their symbols at `values` (none needed where
    every dim is fixed): I/O buffers, a chunked decode's state."""
    import torch

    return sum(math.prod(resolve(s, values or {})) * torch.empty((), dtype=s.dtype).element_size()
               for s in specs)


def to_spec_dtypes(spec: StageSpec, tensors: Mapping[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """`tensors` (inputs of `spec`, by name) cast to the dtypes `spec` states: draws of
    `Graph.sample_inputs` (float32) for a graph whose inputs are partly in its compute
    dtype (`Graph.exported_spec`); other names pass unchanged."""
    dtypes = {t.name: t.dtype for t in spec.inputs}
    return {name: tensor.to(dtypes[name]) if name in dtypes else tensor
            for name, tensor in tensors.items()}
