"""The small interfaces the relay core talks to.  Adapters: MySQL, kafka-python, SQS, Powertools."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from .model import (
    AggregateKey,
    DeadLetter,
    FinalizePlan,
    FinalizeResult,
    Message,
    OutboxRecord,
    PendingStats,
    SendResult,
)


class StoreUnavailable(Exception):
    """The database could not be reached or kept failing; nothing was half-applied.
    ``reached``: a connection was made, so an operation of several statements may have run in
    part (an acquire may hold some shards); False when no attempt got that far."""

    def __init__(self, message: str, reached: bool = True) -> None:
        super().__init__(message)
        self.reached = reached


class CredentialsUnavailable(ValueError):
    """A secret holding credentials could not be read (missing, denied, throttled, unreachable) or
    lacks its fields.  The run ends with one line rather than retrying at once; the next scheduled
    run reads the secret again."""


class OutboxStore(Protocol):
    """The outbox table and its shard leases.  All times are decided by the database clock."""

    def acquire_shards(
        self, token: bytes, owner: str, lease_seconds: float, limit: int, exclude: Collection[int]
    ) -> list[int]:
        """Lease up to ``limit`` (0: all) free shards not in ``exclude``, in random order, each by
        compare-and-set; returns the shards ``token`` now owns."""
        ...

    def read_heads(
        self,
        cursors: Mapping[int, int],
        limit: int,
        exclude: Mapping[int, Sequence[int]] | None = None,
        skip: Mapping[int, Collection[AggregateKey]] | None = None,
    ) -> list[OutboxRecord]:
        """Up to ``limit`` pending rows per shard with id above the shard's cursor, in id order,
        leaving out the ids in ``exclude`` (rows in flight) and every row of the aggregates in
        ``skip`` (blocked ones)."""
        ...

    def load_bodies(self, ids: Sequence[int]) -> dict[int, tuple[bytes, str | None]]:
        """``(payload, headers)`` of the rows whose bodies ``read_heads`` left out; ids of rows no
        longer pending are absent."""
        ...

    def read_due_heads(
        self, shards: Sequence[int], limit: int, exclude: Mapping[int, Sequence[int]] | None = None
    ) -> list[OutboxRecord]:
        """Per shard, the aggregates whose first pending row is due, oldest head first (up to
        ``limit``), each with its first pending rows in id order (its share of ``limit``); then
        heads backing off (``due`` False), soonest due first, to fill ``limit``.  However many
        rows wait behind blocked heads, none is read.  An aggregate whose head is in
        ``exclude`` (in flight) is left out."""
        ...

    def finalize(
        self, token: bytes, shards: Sequence[int], plan: FinalizePlan, lease_seconds: float
    ) -> FinalizeResult:
        """Apply ``plan`` for the shards still leased by ``token``, and renew them, atomically.

        Rows of shards whose lease was lost are left alone and reported in ``lost_shards``.
        """
        ...

    def release(self, token: bytes, shards: Sequence[int] | None, grace_seconds: float) -> None:
        """Give shards back (``None``: all that ``token`` holds); nobody can take them for
        ``grace_seconds``."""
        ...

    def pending_stats(self) -> PendingStats: ...

    def shard_ids(self) -> list[int]:
        """Every shard of the outbox, leased or not."""
        ...


class InFlight(Protocol):
    """A batch handed to Kafka."""

    def wait(self, deadline: float) -> list[SendResult]:
        """Flush once and return one result per message, in order.  Blocks until every send
        completed or ``deadline`` (monotonic seconds) is reached."""
        ...


@dataclass(frozen=True)
class Settled:
    """An :class:`InFlight` whose results are already known."""

    results: list[SendResult]

    def wait(self, deadline: float) -> list[SendResult]:
        return self.results


class Publisher(Protocol):
    """Sends messages to Kafka; the acknowledgements are awaited with :meth:`InFlight.wait`."""

    def new_run(self) -> None:
        """A run starts: forget what the last one learnt about topics (one may exist now)."""
        ...

    def send(self, messages: Sequence[Message], deadline: float) -> InFlight:
        """Hand ``messages`` to Kafka without waiting (one batch in flight at a time)."""
        ...

    @property
    def in_doubt(self) -> bool:
        """True when records may still reach the broker after ``publish`` returned (timed out).
        A publisher may also say for how long (``doubt_seconds``, a float attribute): the run
        then keeps its shards from others at least that long."""
        ...

    def close(self) -> None: ...


class DeadLetterQueueDown(Exception):
    """The dead-letter queue did not answer a send as a whole (unreachable, throttled, denied).
    ``results`` holds the answer per letter so far (letters sent before the failure count)."""

    def __init__(self, error: str, results: Sequence[str | None]) -> None:
        super().__init__(error)
        self.results = list(results)


# Told ``i`` as soon as the queue acknowledged ``letters[i]`` (from the sending thread): a send
# cut off by the deadline still counts the letters that landed.
Acknowledged = Callable[[int], None]


class DeadLetterSink(Protocol):
    """The dead-letter queue."""

    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        """Send each letter; per letter ``None`` once acknowledged (and ``acknowledged(i)`` said
        so on the way), else why the queue refused it.  Raises :class:`DeadLetterQueueDown` when
        the queue itself did not answer."""
        ...


class MetricName:
    """Every metric the function emits, in one place: CloudWatch namespace ``OutboxRelay``
    (``POWERTOOLS_METRICS_NAMESPACE``), dimension ``service`` (``POWERTOOLS_SERVICE_NAME``, the stack
    name).  template.yaml's alarms name them; tests/unit/test_alarms.py checks that they agree."""

    # A relay run (not a dry run): counts, and its outcome.
    PUBLISHED: Final = "Published"
    RETRIED: Final = "Retried"
    DEAD_LETTERED: Final = "DeadLettered"
    LEASE_LOST: Final = "LeaseLost"
    RUN_SUCCEEDED: Final = "RunSucceeded"
    RUN_FAILED: Final = "RunFailed"
    RUN_DURATION_MS: Final = "RunDurationMs"
    # Rows held back because their topic is missing or not authorized (never charged to the rows).
    TOPIC_UNAVAILABLE: Final = "TopicUnavailable"
    # Lag gauges: emitted by relay and dry runs only when the database answered (never a 0 that
    # stands for "unknown").
    PENDING_COUNT: Final = "PendingCount"
    OLDEST_PENDING_AGE_SECONDS: Final = "OldestPendingAgeSeconds"
    # The janitor (retention) and the DEAD rows it counts after each pass.
    JANITOR_SUCCEEDED: Final = "JanitorSucceeded"
    JANITOR_FAILED: Final = "JanitorFailed"
    JANITOR_DELETED: Final = "JanitorDeleted"
    DEAD_COUNT: Final = "DeadCount"
    # Operator actions: dry runs, status, redrive (never counted as relay runs).
    OPERATOR_ACTIONS: Final = "OperatorActions"
    OPERATOR_ACTIONS_FAILED: Final = "OperatorActionsFailed"


class Metrics(Protocol):
    def count(self, name: str, value: float) -> None: ...

    def gauge(self, name: str, value: float, unit: str) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The process's monotonic clock: only ever used for durations, never for leases."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class NullMetrics:
    def count(self, name: str, value: float) -> None:
        pass

    def gauge(self, name: str, value: float, unit: str) -> None:
        pass
