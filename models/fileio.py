"""File writes that never leave half a file, and streamed SHA-256 hashes.

Every artifact the toolkit writes (checkpoints, configs, manifests, engines, stamps) goes
through `atomic_write` (or `atomic_path`, for a library that writes the file itself), so a
crash or Ctrl-C leaves either the old file or the new one; and every cache or integrity
check hashes files with `sha256_file` / `sha256_files`, and an ONNX graph with
`onnx_sha256`: manifests (exports and builds), serving's verification and
the benchmark's export cache all key on that one hash.
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


def onnx_sha256(onnx_path: str | os.PathLike) -> str:
    """Content hash of an ONNX graph: the graph file's bytes, then the bytes of every
    external-data file it references, in location order. File names are not hashed (the
    graph's bytes already name its data files), so the same graph and weights hash the same
    however they were found: the exporter's file list and a build reading the graph agree."""
    import onnx  # lazily: the models package must import without onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except DecodeError:  # damaged: its bytes alone, which match no hash an exporter recorded
        return sha256_file(onnx_path)
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    locations = sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})
    missing = [name for name in locations if not (onnx_path.parent / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{onnx_path} references external data {missing}, missing "
                                f"from {onnx_path.parent}; re-export the stage")
    return sha256_files([onnx_path, *(onnx_path.parent / name for name in locations)])


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """One SHA-256 over several files, in the given order (e.g. graph, then its weights)."""
    digest = hashlib.sha256()
    for path in paths:
        sha256_file(path, digest)
    return digest.hexdigest()
