"""The consumer's helper: process each outbox event once, keyed on its ``id`` header.

The relay delivers at least once; duplicates carry the same ``id``.  ``process`` records the id
in a ``processed_events`` table of the consumer's own MySQL database *in the same transaction* as
the consumer's own changes, so an event's effects are applied exactly once even when Kafka hands
it over twice (redelivery after a crash, a relay lease takeover, a redrive).

    consumer = IdempotentConsumer(lambda: pymysql.connect(..., autocommit=False))
    consumer.ensure_table()
    for record in kafka_consumer:
        consumer.process(record, apply)      # apply(conn, record) runs only for new events
        kafka_consumer.commit()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .sql import ProcessedEventsSql


class EventRecord(Protocol):
    """What ``process`` reads of a kafka-python ``ConsumerRecord``."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class MissingEventId(ValueError):
    """The record has no ``id`` header: it did not come from the outbox relay."""


def event_id_of(record: EventRecord) -> str:
    for name, value in record.headers or ():
        if name == "id":
            return value.decode()
    raise MissingEventId(f"{record.topic}[{record.partition}]@{record.offset} has no 'id' header")


class IdempotentConsumer:
    """De-duplicates outbox events on their ``id`` in the consumer's transaction."""

    def __init__(self, connect: Callable[[], Any], table: str = "processed_events") -> None:
        self._connect = connect
        self.sql = ProcessedEventsSql(table)
        self._conn: Any = None

    def connection(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
            self._conn.autocommit(False)
        return self._conn

    def ensure_table(self) -> None:
        with self.connection().cursor() as cur:
            cur.execute(self.sql.create)
        self.connection().commit()

    def process(self, record: EventRecord, apply: Callable[[Any, EventRecord], None]) -> bool:
        """Run ``apply(conn, record)`` and record the event, in one transaction; skip it (and
        return False) when the event was processed before.  ``apply`` must not commit."""
        event_id = event_id_of(record)
        conn = self.connection()
        conn.begin()
        try:
            with conn.cursor() as cur:
                fresh = cur.execute(self.sql.claim, (event_id, record.topic, record.partition, record.offset))
            if not fresh:
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
