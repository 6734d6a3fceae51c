"""The consumer's helper: process each outbox event once, keyed on its scope and ``id`` header.

The relay delivers at least once; duplicates carry the same ``id``.  ``process`` records the id
in a ``processed_events`` table of the consumer's own MySQL database *in the same transaction* as
the consumer's own changes, so an event's effects are applied exactly once even when Kafka hands
it over twice (redelivery after a crash, a relay lease takeover, a redrive).

    consumer = IdempotentConsumer(lambda: pymysql.connect(..., autocommit=False))
    consumer.ensure_table()                  # creates the table, or upgrades an old one
    for record in kafka_consumer:
        consumer.process(record, apply)      # apply(conn, record) runs only for new events
        kafka_consumer.commit()

The key is ``(scope, id)``.  An event id is unique only within the outbox table that made it,
and two services' outboxes may both hold an id like ``order-42`` (writers may set their own
``event_id``), so ids are scoped.  The default scope is the record's topic: the one identity of
its source every record carries.  A consumer reading several topics fed by *one* outbox passes
``scope="<that outbox>"`` so that an event seen on two of them (its topic changed before a
redrive) still counts once.

The ``id`` header is validated, never truncated: 1 to 36 bytes (the outbox column's size) of
printable ASCII.  Anything else raises :class:`InvalidEventId` before anything is written.

A long-running consumer outlives its connection (failover, idle timeout, a proxy, a restart):
``process`` opens a fresh one through ``connect`` when the old one is gone, but only before an
event's transaction begins.  When the answer to an event's COMMIT is lost, the event may or may
not be recorded: :class:`CommitOutcomeUnknown` says so, and processing the record again settles
it (skipped if the COMMIT landed, applied if not).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pymysql
from pymysql.constants import CR, ER

from .sql import ProcessedEventsSql

MAX_EVENT_ID = ProcessedEventsSql.EVENT_ID_BYTES
MAX_SCOPE = ProcessedEventsSql.SCOPE_BYTES
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")
_SHOWN = 48  # bytes of a refused id quoted in the error
# The connection is gone (or its last answer never came); PyMySQL has closed its socket.
_LOST = frozenset({CR.CR_SERVER_GONE_ERROR, CR.CR_SERVER_LOST, CR.CR_SERVER_LOST_EXTENDED})
# forget_older_than's bounds.  Ids younger than an hour are never forgotten: a relay lease
# takeover, a consumer rebalance or a quick redrive can deliver an event again within minutes,
# and a forgotten id is applied twice.  Ten years is the relay's own longest retention.  A
# batch is one transaction: a huge one holds its locks long.
MIN_FORGET_SECONDS = 3600
MAX_FORGET_SECONDS = 10 * 365 * 86_400
MAX_FORGET_BATCH = 100_000


class EventRecord(Protocol):
    """What ``process`` reads of a kafka-python ``ConsumerRecord``."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


class EventIdError(ValueError):
    """The record cannot be de-duplicated; nothing was written.  Catch this to skip or park it."""

    def __init__(self, record: EventRecord, reason: str) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.reason = reason
        super().__init__(f"{record.topic}[{record.partition}]@{record.offset} {reason}")


class MissingEventId(EventIdError):
    """The record has no ``id`` header: it did not come from the outbox relay."""


class InvalidEventId(EventIdError):
    """The ``id`` header is not 1 to 36 printable ASCII characters (or is repeated): keyed as it
    is, it could be cut or mangled by the database and collide with another event's id."""


class CommitOutcomeUnknown(Exception):
    """The COMMIT of an event's transaction was sent but its answer was lost (the connection
    dropped): the event and ``apply``'s changes may or may not be recorded.  Do not commit the
    record's Kafka offset; process the record again (``process`` then skips it if the COMMIT
    landed, and applies it if not).  ``__cause__`` is the driver's error."""

    def __init__(self, record: EventRecord, scope: str, event_id: str) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.scope, self.event_id = scope, event_id
        super().__init__(
            f"{record.topic}[{record.partition}]@{record.offset} (scope {scope!r}, id {event_id!r}):"
            " the connection was lost during COMMIT, outcome unknown: the event may have been"
            " recorded; process it again before committing its offset"
        )


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone: InterfaceError is PyMySQL's error for a
    connection it had already closed."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in _LOST


def _printable(raw: bytes, limit: int) -> str | None:
    """Why ``raw`` is not 1..``limit`` bytes of printable ASCII, or None when it is.  Control
    characters are refused too: no relayed id has them, and they would corrupt log lines."""
    if not raw:
        return "is empty"
    if len(raw) > limit:
        return f"is {len(raw)} bytes, over {limit}"
    if not _PRINTABLE_ASCII.fullmatch(raw):
        return "is not printable ASCII"
    return None


def _scope_problem(scope: str) -> str | None:
    # isascii first: encoding a lone surrogate would raise, and 'replace' would hide it.
    return _printable(scope.encode("ascii"), MAX_SCOPE) if scope.isascii() else "is not printable ASCII"


def event_id_of(record: EventRecord) -> str:
    """The record's validated ``id`` header."""
    values = [value for name, value in record.headers or () if name == "id"]
    if not values:
        raise MissingEventId(record, "has no 'id' header")
    if len(values) > 1:  # the relay sends one; which of several would be the event's?
        raise InvalidEventId(record, f"has {len(values)} 'id' headers")
    value = values[0]
    if not isinstance(value, bytes | bytearray):
        raise InvalidEventId(record, "has an 'id' header without a value")
    raw = bytes(value)
    why = _printable(raw, MAX_EVENT_ID)
    if why is not None:
        shown = repr(raw[:_SHOWN]) + ("..." if len(raw) > _SHOWN else "")
        raise InvalidEventId(record, f"'id' header {shown} {why}")
    return raw.decode("ascii")


class IdempotentConsumer:
    """De-duplicates outbox events on ``(scope, id)`` in the consumer's transaction.

    ``scope`` None (the default) scopes each event id by its record's topic; a string scopes
    every record by that string (1 to 249 printable ASCII characters).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        table: str = "processed_events",
        scope: str | None = None,
    ) -> None:
        if scope is not None:
            why = _scope_problem(scope) if isinstance(scope, str) else "is not a string"
            if why is not None:
                raise ValueError(f"scope {scope!r} {why}")
        self._connect = connect
        self.sql = ProcessedEventsSql(table)
        self.scope = scope
        self._conn: Any = None

    def connection(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            conn.autocommit(False)
            self._conn = conn
        return self._conn

    def _begin(self) -> Any:
        """A connection with a transaction begun.  One found gone at BEGIN (no event is in
        flight on it) is replaced once by a fresh one from ``connect``, whose errors propagate;
        the next call starts over."""
        stale = self._conn is not None
        try:
            return self._begun(self.connection())
        except Exception as exc:
            if not (stale and _lost(exc)):
                raise
            return self._begun(self.connection())  # raised here, it shows the first as context

    def _begun(self, conn: Any) -> Any:
        try:
            conn.begin()
        except Exception as exc:
            if _lost(exc):
                self._discard()
            raise
        return conn

    def _discard(self) -> None:
        """Drop the connection without waiting on the server (it may be gone); closing it makes
        the server roll back whatever was left open on it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already closed, or the socket is gone
                conn.close()

    def _roll_back(self, error: BaseException) -> None:
        """Roll back after ``error`` without ever hiding it: a connection that cannot roll back
        is discarded.  So is one interrupted by a KeyboardInterrupt and the like, which can
        leave an answer unread: its next command would read that answer as its own."""
        if self._conn is None:
            return
        if not isinstance(error, Exception):
            self._discard()
            return
        try:
            self._conn.rollback()
        except Exception:
            self._discard()

    def ensure_table(self) -> None:
        """Create the table; upgrade one made by an older version (key ``event_id`` alone) to
        ``(scope, event_id)``, old rows getting this consumer's scope.  Idempotent; run it with
        every consumer of the table on this version (an older one would keep inserting rows
        without a scope)."""
        conn = self.connection()
        with conn.cursor() as cur:
            cur.execute(self.sql.create)
            if not self._needs_upgrade(cur):
                conn.commit()
                return
            try:
                cur.execute(self.sql.add_scope)
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != ER.DUP_FIELDNAME:  # added by an earlier, cut-off upgrade
                    raise
            if self.scope is None:
                cur.execute(self.sql.scope_from_topic)
            else:
                cur.execute(self.sql.scope_fixed, (self.scope,))
            conn.commit()
            cur.execute(self.sql.rekey)
        conn.commit()

    def _needs_upgrade(self, cur: Any) -> bool:
        cur.execute(self.sql.primary_key_columns, (self.sql.table,))
        key = [_text(name) for (name,) in cur.fetchall()]
        cur.execute(self.sql.column_types, (self.sql.table,))
        types = {_text(name): _text(kind).lower() for name, kind in cur.fetchall()}
        return key != ["scope", "event_id"] or types.get("event_id") != f"varbinary({MAX_EVENT_ID})"

    def scope_of(self, record: EventRecord) -> str:
        if self.scope is not None:
            return self.scope
        why = _scope_problem(record.topic)  # Kafka's topic names always pass
        if why is not None:
            raise ValueError(f"topic {record.topic[:60]!r} cannot scope event ids: it {why}")
        return record.topic

    def process(self, record: EventRecord, apply: Callable[[Any, EventRecord], None]) -> bool:
        """Run ``apply(conn, record)`` and record the event, in one transaction; skip it (and
        return False) when the event was processed before.  ``apply`` must not commit.

        A connection found gone when the transaction begins is replaced by a fresh one from
        ``connect``; once begun, an event is never retried here.  Raises :class:`EventIdError`
        (nothing written) when the record has no usable ``id``, :class:`CommitOutcomeUnknown`
        when the COMMIT's answer was lost; any other error after a rollback."""
        event_id = event_id_of(record)  # both validated before anything is written
        scope = self.scope_of(record)
        conn = self._begin()
        try:
            row = (scope, event_id, record.topic, record.partition, record.offset)
            try:
                with conn.cursor() as cur:
                    cur.execute(self.sql.claim, row)
            except pymysql.err.IntegrityError as exc:
                if exc.args[0] != ER.DUP_ENTRY:  # e.g. a foreign key the application added
                    raise
                conn.rollback()
                return False
            apply(conn, record)
        except BaseException as exc:
            self._roll_back(exc)
            raise
        try:
            conn.commit()
        except BaseException as exc:
            self._roll_back(exc)
            if _lost(exc):
                raise CommitOutcomeUnknown(record, scope, event_id) from exc
            raise
        return True

    def forget_older_than(self, seconds: float, batch: int = 1000) -> int:
        """Trim the table (keep it longer than any redelivery you expect); returns rows deleted.

        ``seconds`` is :data:`MIN_FORGET_SECONDS` (an hour) to :data:`MAX_FORGET_SECONDS`,
        ``batch`` 1 to :data:`MAX_FORGET_BATCH` rows per transaction; anything else raises
        before the database is touched.  The cutoff is read once: ids recorded during the call
        are never due, so it ends.  A connection found gone between batches is replaced (a
        batch is a plain DELETE: running it again is harmless)."""
        _check_forget(seconds, batch)
        conn = self._begin()
        try:
            with conn.cursor() as cur:
                cur.execute(self.sql.forget_cutoff, (seconds,))
                (cutoff,) = cur.fetchone()
            conn.commit()
        except BaseException as exc:
            self._roll_back(exc)
            raise
        total = 0
        while True:
            conn = self._begin()
            try:
                with conn.cursor() as cur:
                    deleted = int(cur.execute(self.sql.forget_older_than, (cutoff, batch)))
                conn.commit()
            except BaseException as exc:
                self._roll_back(exc)
                raise
            total += deleted
            if deleted < batch:
                return total

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _check_forget(seconds: object, batch: object) -> None:
    # bool is an int: forget_older_than(True) is a mistake, not one second.
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"forget_older_than: seconds must be a number, not {type(seconds).__name__}")
    if not (math.isfinite(seconds) and MIN_FORGET_SECONDS <= seconds <= MAX_FORGET_SECONDS):
        bounds = f"{MIN_FORGET_SECONDS} to {MAX_FORGET_SECONDS}"
        raise ValueError(f"forget_older_than: seconds must be {bounds}, not {seconds!r}")
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"forget_older_than: batch must be an int, not {type(batch).__name__}")
    if not 1 <= batch <= MAX_FORGET_BATCH:
        raise ValueError(f"forget_older_than: batch must be 1 to {MAX_FORGET_BATCH}, not {batch!r}")


def _text(value: object) -> str:
    """information_schema text: str, or bytes on some server/driver combinations."""
    return value.decode() if isinstance(value, bytes) else str(value)
