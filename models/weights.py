"""Safetensors I/O for every stage module: atomic saves, strict loads, file hashes.

Only safetensors is read: a pickle checkpoint (`torch.save`, `.bin`, `.ckpt`) runs arbitrary
code when loaded, so it is refused with instructions to convert it once, in a trusted place.

Loading is strict and reports every problem at once (missing keys, unexpected keys, shape
and dtype mismatches, by tensor name), because fixing a converted checkpoint one error per
run is slow.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from .dtypes import DTYPES, find
from .fileio import atomic_path

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into a module; lists every problem found."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"checkpoint {self.path} does not match the module "
                         f"({len(self.problems)} problem(s)):\n{lines}")


def _storage_key(t: torch.Tensor) -> tuple | None:
    # empty and meta tensors all report data_ptr 0: never treat them as shared
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device, t.untyped_storage().data_ptr())


def _tensors_to_write(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors to store; every stored tensor owns its memory."""
    unsupported = {k: str(t.dtype) for k, t in state.items()
                   if not getattr(find(t.dtype), "safetensors", "")}
    if unsupported:
        raise ValueError(f"safetensors cannot store these dtypes: {unsupported}; cast those "
                         f"tensors to one of {[d.name for d in DTYPES if d.safetensors]}")
    tensors: dict[str, torch.Tensor] = {}
    used_storages: set[tuple] = set()
    for name, t in state.items():
        t = t.detach()
        storage = _storage_key(t)
        # a different view into an already stored buffer (e.g. a slice of a fused weight):
        # safetensors refuses overlapping storage, so store an independent copy
        if storage in used_storages:
            t = t.clone(memory_format=torch.contiguous_format)
        tensors[name] = t.contiguous()
        if storage is not None:
            used_storages.add(storage)
    return tensors


# --- saving ---------------------------------------------------------------------------


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    bad = {k: type(v).__name__ for k, v in metadata.items()
           if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; got non-str entries {bad}"
                         f" (json.dumps structured values)")
    metadata.setdefault("format", "pt")  # what transformers and diffusers expect to find
    return metadata


def save_stage(module: nn.Module, path: str | Path,
               metadata: dict[str, str] | None = None) -> Path:
    """Write `module`'s state dict to `path` (.safetensors), atomically; returns the path.

    Written through fileio.atomic_path, so a crash leaves either the old file or the new one.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"checkpoint path {path} must end with {SUFFIX}")
    metadata = _check_metadata(metadata)
    tensors = _tensors_to_write(module.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # save_file streams: no in-memory copy of the checkpoint
        save_file(tensors, str(tmp), metadata=metadata)
    logger.info("saved %d tensors to %s", len(tensors), path)
    return path


# --- loading --------------------------------------------------------------------------


def _convert_hint(path: Path) -> str:
    return (f"convert it once, in a trusted environment: safetensors.torch.save_file("
            f"torch.load({str(path)!r}, weights_only=True), {str(path.with_suffix(SUFFIX))!r})")


def check_safetensors_file(path: str | Path) -> Path:
    """`path` as a Path if it is an existing safetensors file; raises otherwise.

    FileNotFoundError when it does not exist; CheckpointError (a ValueError) for a pickle
    checkpoint or any other non-safetensors file, whether or not it exists.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        pickled = path.suffix.lower() in PICKLE_SUFFIXES
        kind = "a pickle checkpoint" if pickled else "not safetensors"
        raise CheckpointError(path, [f"refusing {path.name}: {kind} (only {SUFFIX} files are "
                                     f"loaded, pickles can run code); {_convert_hint(path)}"])
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # safetensors layout: u64 little-endian header size, then a JSON header starting '{'
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) < 9 or head[8:9] != b"{" or struct.unpack("<Q", head[:8])[0] > size - 8:
        raise CheckpointError(path, [f"{path.name} has a {SUFFIX} name but not the safetensors "
                                     f"layout (a renamed pickle?); {_convert_hint(path)}"])
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored in a safetensors file (empty dict when it has none)."""
    from safetensors import safe_open

    with safe_open(str(check_safetensors_file(path)), framework="pt") as f:
        return dict(f.metadata() or {})


def _problems(expected: dict[str, torch.Tensor], found: dict[str, tuple]) -> list[str]:
    problems = []
    for name, t in expected.items():
        if name not in found:
            problems.append(f"missing key {name} (module expects {tuple(t.shape)} {t.dtype})")
            continue
        shape, dtype = found[name]
        if shape != tuple(t.shape):
            problems.append(f"shape mismatch {name}: checkpoint {shape} vs module "
                            f"{tuple(t.shape)}")
        if dtype != (getattr(find(t.dtype), "safetensors", "") or str(t.dtype)):
            problems.append(f"dtype mismatch {name}: checkpoint {dtype} vs module {t.dtype} "
                            f"(load, then cast the module)")
    for name in sorted(set(found) - set(expected)):
        shape, dtype = found[name]
        problems.append(f"unexpected key {name} (checkpoint has {shape} {dtype})")
    return problems


M = TypeVar("M", bound=nn.Module)


def load_stage(module: M, path: str | Path) -> M:
    """Load `path` into `module` in place, strictly, and return the module.

    Every module tensor must be in the file with the same shape and dtype, and the file may
    hold nothing else; otherwise a CheckpointError lists all the problems. Tensors are read
    one at a time and copied into the module's own storage (any device).
    """
    from safetensors import safe_open

    path = check_safetensors_file(path)
    expected = module.state_dict()
    with safe_open(str(path), framework="pt") as f:
        found = {}
        for name in f.keys():
            tensor_slice = f.get_slice(name)
            found[name] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
        problems = _problems(expected, found)
        if problems:
            raise CheckpointError(path, problems)
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(f.get_tensor(name))
    logger.info("loaded %d tensors from %s into %s", len(expected), path,
                type(module).__name__)
    return module
