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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pymysql
from pymysql.constants import ER

from .sql import ProcessedEventsSql

MAX_EVENT_ID = ProcessedEventsSql.EVENT_ID_BYTES
MAX_SCOPE = ProcessedEventsSql.SCOPE_BYTES
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")
_SHOWN = 48  # bytes of a refused id quoted in the error


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
            self._conn = self._connect()
            self._conn.autocommit(False)
        return self._conn

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

        Raises :class:`EventIdError` (nothing written) when the record has no usable ``id``."""
        event_id = event_id_of(record)  # both validated before anything is written
        scope = self.scope_of(record)
        conn = self.connection()
        conn.begin()
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
            conn.commit()
            return True
        except BaseException:
            conn.rollback()
            raise

    def forget_older_than(self, seconds: int, batch: int = 1000) -> int:
        """Trim the table (keep it longer than any redelivery you expect); returns rows deleted."""
        total = 0
        conn = self.connection()
        while True:
            with conn.cursor() as cur:
                deleted = int(cur.execute(self.sql.forget_older_than, (seconds, batch)))
            conn.commit()
            total += deleted
            if deleted < batch:
                return total

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _text(value: object) -> str:
    """information_schema text: str, or bytes on some server/driver combinations."""
    return value.decode() if isinstance(value, bytes) else str(value)
