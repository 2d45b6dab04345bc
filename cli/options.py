"""Each command's options are one dataclass: argparse takes its defaults from it and builds
it from the parsed flags, so a default is defined once, in the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def defaults(cls: type) -> dict[str, Any]:
    """`cls`'s field defaults, for `parser.set_defaults(**defaults(cls))` (parser-level
    defaults override any `default=` of add_argument, so flags leave theirs out)."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def names(text: str) -> tuple[str, ...]:
    """A comma-separated flag's values: `a, b,` -> ("a", "b")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """`cls` from the parsed flags named like its fields, plus `given` (derived values)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{n: getattr(args, n) for n in names if n not in given and hasattr(args, n)},
               **given)
