"""The dry run: what the next run would do first, row by row, without leasing, writing or sending."""

from __future__ import annotations

from collections.abc import Callable

from . import ordering
from .model import Message, OutboxRecord
from .ports import OutboxStore


def preview(
    store: OutboxStore, encode: Callable[[OutboxRecord], Message], limit: int
) -> list[tuple[OutboxRecord, str]]:
    """The first ``limit`` pending rows (lowest ids of every shard's head) and each one's verdict:
    ``publish to <topic>``, ``dead-letter: <reason>``, or why the row waits."""
    records = store.read_heads(dict.fromkeys(store.shard_ids(), 0), limit)
    records.sort(key=lambda r: r.id)
    records = records[:limit]
    selection = ordering.select(records, set(), encode)
    verdicts = {r.id: f"publish to {m.topic}" for r, m in selection.sendable}
    verdicts |= {r.id: f"dead-letter: {reason}" for r, reason in selection.invalid}
    out: list[tuple[OutboxRecord, str]] = []
    for record in records:
        if record.id in verdicts:
            out.append((record, verdicts[record.id]))
        elif not record.due:
            out.append((record, f"backing off (attempt {record.attempts})"))
        else:
            out.append((record, "waits behind an earlier event of its aggregate"))
    return out
