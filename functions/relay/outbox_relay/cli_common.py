"""What the operator commands share: their errors, option types and output helpers."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from .config import load_config


class CommandError(Exception):
    """Refused before anything changed."""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows) for i in range(len(headers))
    ]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def relay_runtime() -> Any:
    from .runtime import runtime_for

    return runtime_for(load_config(os.environ))


def outbox_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated outbox ids, got {text!r}") from None
    if not ids or any(i <= 0 for i in ids):
        raise argparse.ArgumentTypeError(f"expected positive outbox ids, got {text!r}")
    return ids
