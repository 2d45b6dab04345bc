"""Lazy imports of the optional runtimes, with install hints, and what they report about
themselves (version, GPU) for manifests."""

from __future__ import annotations

import importlib

from .manifest import RuntimeInfo

TENSORRT_HINT = (
    "TensorRT is not installed. Install the GPU extra in its own environment "
    "(`pip install 'cinema-trt[gpu]'`, which pulls the `tensorrt` wheels from PyPI; needs an "
    "NVIDIA driver and CUDA 12), or run inside an NGC container that ships it "
    "(nvcr.io/nvidia/pytorch:<yy.mm>-py3 or nvcr.io/nvidia/tensorrt:<yy.mm>-py3). "
    "To run on CPU instead, use `cinema-trt build --runtime ort`.")
ONNXRUNTIME_HINT = ("ONNX Runtime is not installed: `pip install 'cinema-trt[onnx]'` "
                    "(CPU) or `pip install 'cinema-trt[gpu]'` (CUDA).")


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message says how to install it."""


def _require(module: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(f"{hint} (import error: {error})") from error


def require_tensorrt():
    """The `tensorrt` module, or MissingDependencyError with the install hint."""
    return _require("tensorrt", TENSORRT_HINT)


def require_onnxruntime():
    return _require("onnxruntime", ONNXRUNTIME_HINT)


def cuda_device_info(device: int | None = None) -> tuple[str, str]:
    """(name, "major.minor") of the current CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA GPU, and torch sees none "
                           "(check the driver and that torch is a CUDA build); to build "
                           "for RTX / workstation GPUs without one, use --runtime "
                           "tensorrt-rtx")
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def require_backend(backend: str):
    """The Python module of a TensorRT backend ("tensorrt", "tensorrt-rtx"; backends.py),
    or MissingDependencyError with its install command."""
    from .backends import get_backend

    described = get_backend(backend)
    hint = TENSORRT_HINT if described.module == "tensorrt" else (
        f"{described.display} is not installed: {described.install}")
    return _require(described.module, hint)


def tensorrt_runtime_info(backend: str = "tensorrt", gpu: bool = True) -> RuntimeInfo:
    """The backend's version and this process's GPU. `gpu=False` (building for a backend
    that compiles ahead of time, TensorRT-RTX) asks for no GPU."""
    trt = require_backend(backend)
    if not gpu:
        return RuntimeInfo(backend, trt.__version__)
    name, capability = cuda_device_info()
    return RuntimeInfo(backend, trt.__version__, name, capability)


def onnxruntime_runtime_info() -> RuntimeInfo:
    ort = require_onnxruntime()
    return RuntimeInfo("onnxruntime", ort.__version__)
