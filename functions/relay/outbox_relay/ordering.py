"""Per-aggregate ordering: the head-of-line rule and the contiguous-prefix rule.

Pure functions over rows in id order; the relay core feeds them and acts on what they return.

* **Head-of-line (per aggregate only).** A row is sent only if every earlier pending row of its
  aggregate is being sent before it in the same pass.  A row in backoff blocks its aggregate, and
  nothing else; an invalid row ends its aggregate's run in this pass (it is dead-lettered first).
* **Bounded by bytes.** A pass takes rows up to a byte budget as well as a row count; a row left
  out by either is deferred to a later pass (its aggregate waits), never skipped.
* **A row costs at most its own aggregate.** Whatever a row holds, failing to encode it
  dead-letters that row (with the reason) and blocks its aggregate for the pass; it never ends
  the pass or the run.
* **Contiguous prefix.** After Kafka answers, an aggregate's rows are marked published only up to
  its first row that was not delivered.  That row alone is charged (retry or dead letter); later
  rows stay pending untouched and are sent again after it, so the *last* copy of every event in
  Kafka is in outbox order even when Kafka delivered a later one first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .messages import BodyNotLoaded, InvalidEvent
from .model import CONTENT_ERRORS, AggregateKey, Delivery, Message, OutboxRecord, SendResult


@dataclass(slots=True)
class Selection:
    """What one pass may send, and what it must dead-letter without sending."""

    sendable: list[tuple[OutboxRecord, Message]] = field(default_factory=list)
    invalid: list[tuple[OutboxRecord, str]] = field(default_factory=list)
    # Shards with rows left for a later pass by the limit alone (not blocked): read them again.
    deferred: set[int] = field(default_factory=set)
    # Aggregates whose row did not fit what was left of the byte budget (the next pass may put
    # them first: a row heavier than that goes first, or never).
    heavy: set[AggregateKey] = field(default_factory=set)


def select(
    records: Iterable[OutboxRecord],
    blocked: set[AggregateKey],
    encode: Callable[[OutboxRecord], Message],
    limit: int | None = None,
    byte_budget: int | None = None,
    weigh: Callable[[OutboxRecord], int] = lambda r: r.body_bytes,
) -> Selection:
    """Apply the head-of-line rule to ``records`` (id order per aggregate).

    ``blocked`` holds aggregates that already have an earlier unsent pending row; it is extended
    in place.  At most ``limit`` rows, weighing at most ``byte_budget`` together (``weigh``: the
    bytes a row holds in memory; but at least one row, whatever its weight), are selected; the
    rest are left for a later pass (``deferred``).
    """
    out = Selection()
    taken = 0
    for record in records:
        if record.key in blocked:
            continue
        if not record.due:
            blocked.add(record.key)
            continue
        weight = weigh(record)
        full = limit is not None and len(out.sendable) + len(out.invalid) >= limit
        heavy = byte_budget is not None and taken > 0 and taken + weight > byte_budget
        if full or heavy:
            blocked.add(record.key)
            out.deferred.add(record.shard)
            if heavy and not full:
                out.heavy.add(record.key)
            continue
        try:
            out.sendable.append((record, encode(record)))
        except BodyNotLoaded:  # not loaded this pass: it waits, and so does its aggregate
            blocked.add(record.key)
            out.deferred.add(record.shard)
            continue
        except InvalidEvent as exc:
            out.invalid.append((record, str(exc)))
            blocked.add(record.key)
        except CONTENT_ERRORS as exc:  # a row costs at most its own aggregate
            # Whatever the content makes encoding raise (deep nesting, bad unicode, a value out
            # of range), the row is dead-lettered with the reason and the run goes on.
            out.invalid.append((record, f"cannot encode the row: {type(exc).__name__}: {exc}"[:500]))
            blocked.add(record.key)
        taken += weight
    return out


@dataclass(slots=True)
class Settlement:
    """The outcome of one pass, per the contiguous-prefix rule."""

    published: list[OutboxRecord] = field(default_factory=list)
    retry: list[tuple[OutboxRecord, str]] = field(default_factory=list)
    # Its topic is missing or denied: backed off, no attempt charged (a per-topic outage).
    waiting: list[tuple[OutboxRecord, str]] = field(default_factory=list)
    rejected: list[tuple[OutboxRecord, str]] = field(default_factory=list)
    unavailable: str | None = None


def settle(sent: Sequence[tuple[OutboxRecord, SendResult]]) -> Settlement:
    """Decide each sent row's fate from Kafka's answers (rows in send order, id order per key)."""
    out = Settlement()
    stopped: set[AggregateKey] = set()
    for record, result in sent:
        if result.delivery is Delivery.UNAVAILABLE and out.unavailable is None:
            out.unavailable = result.error
        if record.key in stopped:
            continue
        if result.delivery is Delivery.DELIVERED:
            out.published.append(record)
            continue
        stopped.add(record.key)
        if result.delivery is Delivery.RETRY:
            out.retry.append((record, result.error))
        elif result.delivery is Delivery.TOPIC_UNAVAILABLE:
            out.waiting.append((record, result.error))
        elif result.delivery is Delivery.REJECTED:
            out.rejected.append((record, result.error))
    return out
