"""The invariant checker: after a run, compare what Kafka and the dead-letter queue hold with the
outbox, and count every way the guarantees could have been broken.

* no event lost: every PUBLISHED row's event id is in Kafka; no row left PENDING without a reason
  (a backoff in the future with its error recorded);
* per-aggregate order: in each (topic, key) log, the last copy of each event comes in ``seq``
  order (``seq`` is the aggregate's version, set by the writers, who lock the aggregate first);
* duplicates only as exact copies: same id, same key, value and headers;
* every DEAD row has a dead letter with its reason, and every dead letter is of a DEAD row.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from outbox_relay.kafka_tools import ConsumedRecord


@dataclass(frozen=True)
class Row:
    id: int
    event_id: str
    topic: str
    aggregate_id: str
    seq: int | None
    status: str
    payload: bytes
    last_error: str | None
    backing_off: bool


@dataclass
class Verdict:
    events: int = 0
    published: int = 0
    dead: int = 0
    pending: int = 0
    records: int = 0
    lost: list[str] = field(default_factory=list)
    stuck: list[int] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    duplicates: int = 0
    unequal_copies: list[str] = field(default_factory=list)
    dead_without_letter: list[str] = field(default_factory=list)
    letters_without_dead_row: list[str] = field(default_factory=list)
    wrong_reason: list[str] = field(default_factory=list)
    unknown_records: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.stuck
            or self.order_violations
            or self.unequal_copies
            or self.dead_without_letter
            or self.letters_without_dead_row
            or self.wrong_reason
            or self.unknown_records
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "published": self.published,
            "dead": self.dead,
            "pending": self.pending,
            "records": self.records,
            "lost": len(self.lost),
            "stuck": len(self.stuck),
            "order_violations": len(self.order_violations),
            "duplicates": self.duplicates,
            "unequal_copies": len(self.unequal_copies),
            "dead_without_letter": len(self.dead_without_letter),
            "letters_without_dead_row": len(self.letters_without_dead_row),
            "wrong_reason": len(self.wrong_reason),
            "unknown_records": len(self.unknown_records),
            "examples": (
                self.lost
                + self.order_violations
                + self.unequal_copies
                + self.dead_without_letter
                + self.letters_without_dead_row
                + self.wrong_reason
                + self.unknown_records
            )[:5],
        }


def check(
    rows: Sequence[Row], records: Sequence[ConsumedRecord], letters: Iterable[dict[str, Any]]
) -> Verdict:
    """Compare the outbox (``rows``), everything read back from Kafka (``records``, in offset order
    per partition) and the dead letters."""
    verdict = Verdict(events=len(rows), records=len(records))
    by_event = {row.event_id: row for row in rows}
    copies: dict[str, list[ConsumedRecord]] = defaultdict(list)
    for record in records:
        event_id = record.headers.get("id", b"").decode()
        if event_id not in by_event:
            verdict.unknown_records.append(
                f"{record.topic}@{record.offset}: id {event_id!r} is no outbox row"
            )
            continue
        copies[event_id].append(record)

    for row in rows:
        if row.status == "PUBLISHED":
            verdict.published += 1
            if row.event_id not in copies:
                verdict.lost.append(f"row {row.id} ({row.event_id}) PUBLISHED but not in Kafka")
        elif row.status == "DEAD":
            verdict.dead += 1
        else:
            verdict.pending += 1
            if not (row.backing_off and row.last_error):
                verdict.stuck.append(row.id)

    for event_id, found in copies.items():
        row = by_event[event_id]
        verdict.duplicates += len(found) - 1
        first = found[0]
        for other in found:
            if (other.topic, other.key, other.value, other.headers) != (
                first.topic,
                first.key,
                first.value,
                first.headers,
            ):
                verdict.unequal_copies.append(f"{event_id}: copies differ")
                break
        if first.value != row.payload or first.key != row.aggregate_id.encode() or first.topic != row.topic:
            verdict.unequal_copies.append(f"{event_id}: the record is not the row (key, value or topic)")

    verdict.order_violations = order_violations(records)

    dead_reasons = {row.event_id: row.last_error for row in rows if row.status == "DEAD"}
    lettered: set[str] = set()
    for letter in letters:
        event_id = str(letter.get("event_id"))
        lettered.add(event_id)
        if event_id not in dead_reasons:
            verdict.letters_without_dead_row.append(f"dead letter for {event_id}, which is not DEAD")
        elif not letter.get("reason"):
            verdict.wrong_reason.append(f"dead letter for {event_id} has no reason")
    for event_id, reason in dead_reasons.items():
        if event_id not in lettered:
            verdict.dead_without_letter.append(f"DEAD row {event_id} ({reason}) has no dead letter")
    return verdict


def order_violations(records: Sequence[ConsumedRecord]) -> list[str]:
    """Per (topic, key): the ``seq`` of each event's last copy, in log order, must increase."""
    last: dict[str, tuple[int, ConsumedRecord]] = {}
    for position, record in enumerate(records):
        last[record.headers.get("id", b"").decode()] = (position, record)
    logs: dict[tuple[str, int, bytes | None], list[tuple[int, int]]] = defaultdict(list)
    for record in (r for _, r in sorted(last.values(), key=lambda item: item[0])):
        if "seq" in record.headers:
            logs[(record.topic, record.partition, record.key)].append(
                (record.offset, int(record.headers["seq"]))
            )
    out = []
    for (topic, _partition, key), entries in logs.items():
        seqs = [seq for _, seq in sorted(entries)]
        for a, b in itertools.pairwise(seqs):
            if b <= a:
                out.append(f"{topic} key {key!r}: seq {b} after {a}")
    return out
