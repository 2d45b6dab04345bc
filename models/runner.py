"""The one interface every stage is called through: `run(inputs) -> outputs`.

The pipeline and the Triton orchestrator only talk to runners, so the same sampler code
drives PyTorch, ONNX Runtime (export/), TensorRT (engines/) and Triton stage models.
Tensors are `torch.Tensor` on both sides: torch is a core dependency, and TensorRT and
Triton's DLPack hand-off take torch tensors without a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import torch

Tensors = dict[str, torch.Tensor]


@runtime_checkable
class Runner(Protocol):
    """A stage that can be called with named tensors and returns named tensors."""

    name: str

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors: ...


class TorchRunner:
    """Runs a PyTorch module whose forward takes the named inputs as keyword arguments.

    `output_names` name the module's return values in order (a tensor or a tuple).
    """

    def __init__(self, name: str, module: torch.nn.Module, output_names: tuple[str, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = module.to(self.device, dtype=dtype).eval()
        self.output_names = output_names

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        outputs = self.module(**{k: self._prepare(v) for k, v in inputs.items()})
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if len(outputs) != len(self.output_names):
            raise RuntimeError(f"{self.name}: module returned {len(outputs)} outputs, "
                               f"expected {len(self.output_names)} ({self.output_names})")
        return dict(zip(self.output_names, outputs, strict=True))


class FunctionRunner:
    """A runner around a plain function of named tensors (handy for composed stages)."""

    def __init__(self, name: str, fn: Callable[[Mapping[str, torch.Tensor]], Tensors]):
        self.name = name
        self._fn = fn

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        return self._fn(inputs)


def compute_dtype(runner: Runner) -> str:
    """What `runner`'s graph computes in ("float16"): its export manifest's compute_dtype
    (ONNX Runtime and TensorRT runners carry one), a Triton BLS runner's `compute` (its
    stage model's, serving/bls.py), a TorchRunner's dtype, else float32. A graph that hands
    tensors back to itself takes them in this dtype (`Graph.exported_spec`)."""
    manifest = getattr(runner, "manifest", None)
    if manifest is not None:
        return str(manifest.compute_dtype)
    compute = getattr(runner, "compute", None)  # a Triton BLS runner: its stage model's
    if isinstance(compute, str):
        return compute
    dtype = getattr(runner, "dtype", None)
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else "float32"
