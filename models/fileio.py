"""File writes that never leave half a file, and streamed SHA-256 hashes.

Every artifact the toolkit writes (checkpoints, configs, manifests, engines, stamps) goes
through `atomic_write` (or `atomic_path`, for a library that writes the file itself), so a
crash or Ctrl-C leaves either the old file or the new one; and every cache or integrity
check hashes files with `sha256_file` / `sha256_files`.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = 1 << 20  # hash 1 MiB at a time: checkpoints and engines can be tens of GB


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path in `path`'s folder to write to (by a library that writes files itself);
    on success it is fsynced and renamed over `path`, on error deleted."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when something above failed


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview | str) -> Path:
    """Write `data` to `path` through a temp file in the same folder, fsync, then rename."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(path)


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
