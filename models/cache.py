"""One content-addressed artifact cache: weights -> export -> build -> repository.

An entry is the folder `<root>/<kind>/<key>/`, its key `cache_key` of everything that
decides the artifact (an export: the weights' hash, config, precision, library versions; a
build: the export's key, build config, profiles, runtime version, GPU; a repository: the
upstream keys and options), so changed inputs name another folder and no entry is edited.
It is made in a staging folder and renamed into place once `check` accepts it: a crash (an
exception in `make`) leaves no entry, and of two processes making one entry the first rename
wins. A present entry is reused only while `check` accepts it; a damaged one is remade.
`cinema-trt build` writes where the user says, so it shares the key function only
(engines/manifest.py `engine_key`), with its own reuse check beside the plan.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import sha256_file

log = logging.getLogger(__name__)


def cache_key(payload: Any) -> str:
    """sha256 of the canonical JSON of `payload` (sorted keys; paths and enums as str)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def folder_sha256(folder: str | os.PathLike) -> str:
    """One sha256 over every file under `folder`: each relative path, then its bytes."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        sha256_file(path, digest)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    path: Path
    key: str
    reused: bool  # False: made by this call


def _problem(path: Path, check: Callable[[Path], object]) -> str | None:
    """Why the entry at `path` cannot be used, or None when it can."""
    if not path.is_dir():
        return "no entry"
    try:
        check(path)
    except (FileNotFoundError, ValueError) as error:  # incomplete, or anything else
        return f"invalid entry: {error}"
    return None


@dataclass(frozen=True)
class ArtifactCache:
    root: Path

    def path(self, kind: str, inputs: dict[str, Any]) -> Path:
        """Where the entry of `inputs` lives, made or not."""
        return Path(self.root) / kind / cache_key({"kind": kind, **inputs})

    def entry(self, kind: str, inputs: dict[str, Any], make: Callable[[Path], object],
              check: Callable[[Path], object]) -> Entry:
        """`<root>/<kind>/<key of inputs>/`: reused when `check` accepts it, else made.

        `make(folder)` writes the artifact into `folder` (not yet existing); `check(folder)`
        raises FileNotFoundError or ValueError when the folder does not hold a valid one.
        """
        path = self.path(kind, inputs)
        key = path.name
        reason = _problem(path, check)
        if reason is None:
            log.info("%s: reusing %s", kind, path)
            return Entry(path, key, True)
        log.info("%s: making %s (%s)", kind, path, reason)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{key[:16]}.{uuid.uuid4().hex[:8]}.staging")
        try:
            make(staging)
            problem = _problem(staging, check)
            if problem is not None:
                raise RuntimeError(f"{kind}: the artifact just made is not valid ({problem})")
            _install(staging, path, check)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # left only when it was not installed
        return Entry(path, key, False)


def _install(staging: Path, path: Path, check: Callable[[Path], object]) -> None:
    """Rename `staging` to `path`, first moving aside an invalid entry there; when another
    process installed a valid entry meanwhile, keep that one (same key: same artifact)."""
    if path.exists():
        if _problem(path, check) is None:
            return
        stale = path.with_name(f".{path.name[:16]}.{uuid.uuid4().hex[:8]}.stale")
        os.rename(path, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, path)
    except OSError:  # another process renamed its entry in between
        if _problem(path, check) is not None:
            raise
