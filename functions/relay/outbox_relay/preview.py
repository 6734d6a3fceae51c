"""The dry run: what the next run would do first, row by row, without leasing, writing or sending."""

from __future__ import annotations

from collections.abc import Callable

from . import ordering
from .bodies import weigh, with_bodies
from .config import RelaySettings
from .model import AggregateKey, Message, OutboxRecord
from .ports import OutboxStore


def preview(
    store: OutboxStore, encode: Callable[[OutboxRecord], Message], limit: int, settings: RelaySettings
) -> list[tuple[OutboxRecord, str]]:
    """The first ``limit`` pending rows (lowest ids of every shard's head) and each one's verdict:
    ``publish to <topic>``, ``dead-letter: <reason>``, or why the row waits."""
    records = store.read_heads(dict.fromkeys(store.shard_ids(), 0), limit)
    records.sort(key=lambda r: r.id)
    size, largest = settings.max_batch_bytes, settings.max_message_bytes
    # Loaded and selected in the relay's order (shard, then id): the byte budget picks the same
    # rows as a run would; the verdicts are listed in id order.
    in_pass_order = sorted(records[:limit], key=lambda r: (r.shard, r.id))
    in_pass_order = with_bodies(store, in_pass_order, set(), None, size, largest)
    selection = ordering.select(in_pass_order, set(), encode, None, size, weigh(largest))
    records = sorted(in_pass_order, key=lambda r: r.id)
    verdicts = {r.id: f"publish to {m.topic}" for r, m in selection.sendable}
    verdicts |= {r.id: f"dead-letter: {reason}" for r, reason in selection.invalid}
    out: list[tuple[OutboxRecord, str]] = []
    waiting: set[AggregateKey] = set()  # aggregates with an earlier row that does not go now
    for record in records:
        verdict = verdicts.get(record.id)
        if verdict is None:
            if not record.due:
                verdict = f"backing off (attempt {record.attempts})"
            elif record.key in waiting:
                verdict = "waits behind an earlier event of its aggregate"
            else:
                verdict = "left for a later pass (the pass's byte budget)"
        if not verdict.startswith("publish"):
            waiting.add(record.key)
        out.append((record, verdict))
    return out
