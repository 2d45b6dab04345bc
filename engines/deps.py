"""Lazy imports of the backends' modules, with their install hints, and what a backend
reports about itself (version, GPU) for manifests."""

from __future__ import annotations

import importlib

from cinema_trt.models.backends import get_backend

from .manifest import RuntimeInfo


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message says how to install it."""


def require_backend(backend: str):
    """The Python module of a backend (models/backends.py), or MissingDependencyError with
    its install command."""
    described = get_backend(backend)
    try:
        return importlib.import_module(described.module)
    except ImportError as error:
        raise MissingDependencyError(f"{described.display} is not installed: "
                                     f"{described.install} (import error: {error})") from error


def unusable(backend: str) -> str | None:
    """Why a backend's artifacts cannot run in this process (its module is not installed,
    or its plans need a CUDA GPU and torch sees none), or None when they can."""
    import importlib.util

    import torch

    described = get_backend(backend)
    if importlib.util.find_spec(described.module) is None:
        return f"the {described.module} module is not installed ({described.install})"
    if described.plans and not torch.cuda.is_available():
        return "no CUDA device"
    return None


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


def runtime_info(backend: str, gpu: bool = True) -> RuntimeInfo:
    """The backend's version and, for a backend of GPU plans asked with `gpu`, this
    process's GPU (`gpu=False`: building for one that compiles ahead of time)."""
    module = require_backend(backend)
    if not (gpu and get_backend(backend).plans):
        return RuntimeInfo(backend, module.__version__)
    name, capability = cuda_device_info()
    return RuntimeInfo(backend, module.__version__, name, capability)
