"""Plain-text tables for the commands' summaries (export, compare, the demo's latency)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], right: bool = False) -> str:
    """`rows` (the header first) in columns as wide as their widest cell, two spaces apart;
    `right`: every column but the first aligned right (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if right and i else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     for row in rows)
