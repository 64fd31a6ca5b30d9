"""Output of the command line: tables for people, JSON for machines, sizes in bytes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["count", "emit_json", "human_bytes", "table"]


def human_bytes(n: float) -> str:
    """*n* bytes as a short size in powers of 1024 (``"1.5 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def count(n: int, noun: str) -> str:
    """``"1 dataset"``, ``"3 datasets"``: *n* and *noun*, plural unless *n* is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def emit_json(document: Any) -> None:
    """Print *document* as one JSON document on stdout."""
    json.dump(document, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
