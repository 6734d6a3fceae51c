"""Large bodies: the head read leaves them out; a pass loads only those of the rows it will send,
within its byte budget.  So one pass holds at most the page's small bodies plus the budget,
whatever the rows hold (a payload may be 16 MiB)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from . import ordering
from .model import AggregateKey, Message, OutboxRecord
from .ports import OutboxStore


def weigh(max_message_bytes: int) -> Callable[[OutboxRecord], int]:
    """The bytes a row holds in memory while it is sent: a payload over the limit is never loaded
    (it is dead-lettered by its size alone), so it weighs nothing."""

    def weight(record: OutboxRecord) -> int:
        return 0 if record.payload_bytes > max_message_bytes else record.body_bytes

    return weight


def _probe(record: OutboxRecord) -> Message:
    return Message(record.id, "", b"", b"", [])


def with_bodies(
    store: OutboxStore,
    records: Sequence[OutboxRecord],
    blocked: set[AggregateKey],
    limit: int | None,
    byte_budget: int,
    max_message_bytes: int,
) -> list[OutboxRecord]:
    """``records`` with the bodies loaded of the rows a pass under these limits would take (the
    same head-of-line rule, run without encoding).  A row whose body did not come back (no
    longer pending) stays unloaded: the pass defers it."""
    if all(r.loaded for r in records):
        return list(records)
    weight = weigh(max_message_bytes)
    candidates = ordering.select(records, set(blocked), _probe, limit, byte_budget, weight)
    wanted = [r.id for r, _ in candidates.sendable if not r.loaded and r.payload_bytes <= max_message_bytes]
    bodies = store.load_bodies(wanted)
    return [
        dataclasses.replace(r, payload=bodies[r.id][0], headers=bodies[r.id][1], loaded=True)
        if r.id in bodies
        else r
        for r in records
    ]
