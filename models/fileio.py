"""File writes that never leave half a file, and streamed SHA-256 hashes.

Every artifact the toolkit writes (checkpoints, configs, manifests, engines, stamps) goes
through `atomic_write`, so a crash or Ctrl-C leaves either the old file or the new one; and
every cache or integrity check hashes files with `sha256_file` / `sha256_files`.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20  # hash 1 MiB at a time: checkpoints and engines can be tens of GB


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview | str) -> Path:
    """Write `data` to `path` through a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when something above failed
    return path


def sha256_file(path: str | os.PathLike, digest: hashlib._Hash | None = None) -> str:
    """Hex SHA-256 of a file; with `digest`, the file is added to that running hash."""
    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """One SHA-256 over several files, in the given order (e.g. graph, then its weights)."""
    digest = hashlib.sha256()
    for path in paths:
        sha256_file(path, digest)
    return digest.hexdigest()
