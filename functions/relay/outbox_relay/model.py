"""Value types shared by the relay core and its adapters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .rowtext import shown

AggregateKey = tuple[str, str]
"""(aggregate_type, aggregate_id): the unit of ordering."""

# Blocked aggregates a run's summary names (``blocked_aggregates`` counts them all).
BLOCKED_LISTED = 20

# What a row's content can make encoding or sending raise (bad values, bad unicode, nesting past
# the recursion limit, numbers out of range): that row is dead-lettered or charged, and the run
# goes on.  Anything else is a bug, and a bug must not dead-letter the whole outbox row by row:
# it ends the run instead.
CONTENT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    LookupError,
    RecursionError,
    OverflowError,
)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One pending outbox row, as read by the relay.  Its text is what the row holds, decoded
    losslessly whatever the bytes (rowtext.py): a value that is not text of its column's character
    set holds U+DC80..U+DCFF, and messages.encode refuses it."""

    id: int
    event_id: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: bytes
    topic: str | None
    headers: str | None
    seq: int | None
    attempts: int
    shard: int
    due: bool
    # Sizes as stored, in bytes (None: the size of what is here).  A read leaves large bodies
    # out (``loaded`` False: ``payload`` is b"" and ``headers`` None) so memory is bounded by
    # bytes; the relay loads them for the rows it sends, within the pass's byte budget.
    payload_size: int | None = None
    headers_size: int | None = None
    loaded: bool = True
    # Until ``due``: how long its backoff has left, by the database clock, when it was read.
    wait_seconds: float = 0.0

    @property
    def key(self) -> AggregateKey:
        return (self.aggregate_type, self.aggregate_id)

    @property
    def payload_bytes(self) -> int:
        return len(self.payload) if self.payload_size is None else self.payload_size

    @property
    def body_bytes(self) -> int:
        """What sending the row holds in memory: its payload and its extra headers."""
        headers = len(self.headers or "") if self.headers_size is None else self.headers_size
        return self.payload_bytes + headers


@dataclass(frozen=True, slots=True)
class Message:
    """A Kafka record built from an outbox row."""

    record_id: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class Delivery(enum.Enum):
    """How one send ended, and what it means for the row."""

    DELIVERED = "delivered"  # acknowledged by Kafka (acks=all): the row may be marked published
    RETRY = "retry"  # this row's own problem that may pass: attempt+1
    TOPIC_UNAVAILABLE = "topic_unavailable"  # its topic is missing or denied: a per-topic outage, no attempt
    REJECTED = "rejected"  # permanent for this row (too large, invalid): dead-letter it now
    UNAVAILABLE = "unavailable"  # Kafka itself is down or slow: nobody's fault, no attempt, stop the run
    NOT_SENT = "not_sent"  # skipped to keep order or by a cap: untouched, no attempt


@dataclass(frozen=True, slots=True)
class SendResult:
    delivery: Delivery
    error: str = ""


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Back a row off; ``attempts`` is the count the relay read (the finalize's idempotence guard)."""

    record_id: int
    delay_seconds: float
    error: str
    charge_attempt: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What goes to the dead-letter queue: the event and why it could not be published."""

    record: OutboxRecord
    reason: str
    topic: str | None


@dataclass(slots=True)
class FinalizePlan:
    """The writes of one fenced finalize transaction."""

    published: list[int] = field(default_factory=list)
    retries: list[RetryDecision] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.published or self.retries or self.dead)


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    published: int
    retried: int
    dead: int
    lost_shards: frozenset[int]


@dataclass(frozen=True, slots=True)
class PendingStats:
    pending: int
    oldest_pending_age_seconds: float


@dataclass(slots=True)
class Summary:
    """What one relay run did; the handler returns it as JSON."""

    published: int = 0
    retried: int = 0
    dead_lettered: int = 0
    pending: int = 0
    oldest_pending_age_seconds: float = 0.0
    passes: int = 0
    shards: int = 0
    lease_lost: int = 0
    topic_unavailable: int = 0
    # Aggregates found blocked (their head backs off, its topic is missing, ...) and why.
    blocked: dict[AggregateKey, str] = field(default_factory=dict)
    stopped_by: str = "drained"
    error: str | None = None
    dry_run: bool = False
    would_publish: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "published": self.published,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "pending": self.pending,
            "oldest_pending_age_seconds": round(self.oldest_pending_age_seconds, 3),
            "passes": self.passes,
            "shards": self.shards,
            "lease_lost": self.lease_lost,
            "stopped_by": self.stopped_by,
        }
        if self.topic_unavailable:
            out["topic_unavailable"] = self.topic_unavailable
        if self.blocked:
            out["blocked_aggregates"] = len(self.blocked)
            out["blocked"] = [
                {"aggregate_type": shown(t), "aggregate_id": shown(i), "reason": shown(why)}
                for (t, i), why in sorted(self.blocked.items())[:BLOCKED_LISTED]
            ]
        if self.dry_run:
            out["dry_run"] = True
            out["would_publish"] = self.would_publish
        if self.error is not None:
            out["error"] = self.error
        return out
