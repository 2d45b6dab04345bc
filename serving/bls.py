"""`BlsRunner`: a `Runner` whose `run` is a Business Logic Scripting call to a stage model.

Only usable inside a Triton Python-backend stub, where `triton_python_backend_utils`
exists. Tensors cross in both directions through DLPack, so the orchestrator hands torch
tensors to Triton and gets torch tensors back without a numpy copy; bool tensors (the VAE
decoder's `first` flag) too, as DLPack's kDLBool (the served video is bit-identical to the
in-process one: tests/serving/test_serving_e2e.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import torch
from torch.utils.dlpack import to_dlpack

from cinema_trt.models.runner import Tensors
from cinema_trt.models.specs import StageSpec


class StageError(RuntimeError):
    """A stage model returned an error (its message is kept)."""


def pb_utils():
    """The Python backend's utilities module (exists only inside the backend stub)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send our package's log records to the stub's stderr, which the server's log shows."""
    logger = logging.getLogger("cinema_trt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)


def to_triton(name: str, tensor: torch.Tensor):
    # DLPack needs a dense row-major buffer; detach drops autograd state DLPack rejects
    return pb_utils().Tensor.from_dlpack(name, to_dlpack(tensor.detach().contiguous()))


def from_triton(tensor) -> torch.Tensor:
    return torch.from_dlpack(tensor.to_dlpack())


class BlsRunner:
    """Calls model `model_name` (default: the stage's name) with the stage's tensor names;
    `spec` is the stage model's (its `exported_spec` at `compute`, what its graph computes
    in: models/runner.py `compute_dtype` reads it)."""

    def __init__(self, spec: StageSpec, model_name: str | None = None,
                 compute: str = "float32"):
        self.name = spec.name
        self.spec = spec
        self.model_name = model_name or spec.name
        self.compute = compute

    def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        expected = set(self.spec.input_names)
        if set(inputs) != expected:
            raise ValueError(f"{self.name}: got inputs {sorted(inputs)}, the stage takes "
                             f"{sorted(expected)}")
        pb = pb_utils()
        request = pb.InferenceRequest(
            model_name=self.model_name,
            inputs=[to_triton(name, inputs[name]) for name in self.spec.input_names],
            requested_output_names=list(self.spec.output_names),
            # the sampler runs on the CPU; ask GPU stages for host memory back
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0))
        response = request.exec()
        if response.has_error():
            raise StageError(f"stage model {self.model_name!r} failed: "
                             f"{response.error().message()}")
        outputs = {name: from_triton(pb.get_output_tensor_by_name(response, name))
                   for name in self.spec.output_names}
        for name, tensor in outputs.items():
            # NaN from a broken stage would otherwise flow on and come back as a grey video
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise StageError(f"stage model {self.model_name!r} returned non-finite values "
                                 f"in {name!r}; its weights or engine are broken")
        return outputs
