"""The writer's helper (events in the caller's transaction) and the consumer's helper
(each event processed once, keyed on its id header)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
from kafka import KafkaConsumer, TopicPartition

from outbox_relay.consumer import IdempotentConsumer, MissingEventId
from outbox_relay.writer import OutboxWriteError, add_event
from tests import support
from tests.conftest import make_topics


@dataclass(frozen=True)
class FakeRecord:
    topic: str
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]]


def _txn(database: support.Database) -> Any:
    conn = database.conn()
    conn.autocommit(False)
    return conn


def test_writer_adds_the_event_in_the_callers_transaction(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    make_topics(topics, "order")
    database.query("CREATE TABLE orders (id VARCHAR(32) PRIMARY KEY, state VARCHAR(16))")
    conn = _txn(database)

    def pay() -> str:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES ('o-1', 'PAID')")
        return add_event(
            conn,
            "order",
            "o-1",
            "OrderPaid",
            {"orderId": "o-1", "cents": 1200},
            headers={"traceparent": "00-abc-01"},
            seq=2,
        )

    pay()
    assert database.status_counts() == {}, "nothing visible before the caller commits"
    conn.rollback()
    assert database.status_counts() == {} and database.query("SELECT * FROM orders") == [], (
        "rolled back together with the business change"
    )

    event_id = pay()
    conn.commit()
    conn.close()
    assert invoke()["published"] == 1
    (record,) = topics.read("order")
    assert record.headers["id"] == event_id.encode() and record.headers["seq"] == b"2"
    assert record.headers["traceparent"] == b"00-abc-01"
    assert json.loads(record.value or b"") == {"orderId": "o-1", "cents": 1200}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"payload": {"x": float("nan")}}, "payload cannot be serialized to JSON"),
        ({"payload": "{oops"}, "payload is not valid JSON"),
        ({"payload": {"x": object()}}, "payload cannot be serialized to JSON"),
        ({"aggregate_id": ""}, "aggregate_id must be a non-empty string"),
        ({"topic": "bad topic"}, "topic 'bad topic' is not a legal Kafka topic name"),
        ({"headers": {"id": "x"}}, "header 'id' is reserved"),
        ({"event_id": "42"}, "event_id '42' is not a UUID"),
        ({"payload": "x" * 10, "max_payload_bytes": 5}, "payload is 10 bytes, over the 5-byte limit"),
        (
            {"payload": [1] * 600, "max_payload_bytes": 1024},
            "payload is 1201 bytes, over the 1024-byte limit",
        ),
        ({"aggregate_type": "order v2"}, "topic 'outbox.event.order v2' (made by topic_template"),
        ({"aggregate_type": "x" * 255}, "is not a legal Kafka topic name"),
        ({"aggregate_id": "o-\ud83d"}, "aggregate_id is not valid UTF-8"),
        ({"payload": {1: "a", "1": "b"}}, "payload has the key '1' twice"),
    ],
)
def test_writer_refuses_what_the_relay_would_dead_letter(
    database: support.Database, kwargs: dict[str, Any], message: str
) -> None:
    conn = _txn(database)
    args: dict[str, Any] = {
        "aggregate_type": "order",
        "aggregate_id": "o-1",
        "event_type": "E",
        "payload": {},
    }
    args.update(kwargs)
    with pytest.raises(OutboxWriteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        add_event(conn, **args)
    conn.commit()
    conn.close()
    assert database.status_counts() == {}


def test_writer_refuses_a_connection_that_is_not_utf8mb4(database: support.Database) -> None:
    emoji = "o-\U0001f600"
    for charset in ("utf8", "utf8mb3"):
        conn = pymysql.connect(
            host=support.DB_HOST,
            port=support.DB_PORT,
            user=support.DB_USER,
            password=support.DB_PASSWORD,
            database=database.name,
            autocommit=False,
            charset=charset,
        )
        with pytest.raises(OutboxWriteError, match=f"character set is '{charset}', not 'utf8mb4'"):
            add_event(conn, "order", emoji, "E", {})
        conn.commit()
        conn.close()
    assert database.status_counts() == {}
    conn = _txn(database)  # utf8mb4: the key is stored as given
    add_event(conn, "order", emoji, "E", {})
    conn.commit()
    conn.close()
    assert [r["aggregate_id"] for r in database.rows()] == [emoji]


def test_writer_refuses_an_autocommit_connection(database: support.Database) -> None:
    with database.conn() as conn, pytest.raises(OutboxWriteError, match="autocommit mode"):
        add_event(conn, "order", "o-1", "E", {})


def test_consumer_helper_processes_a_duplicated_event_once(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    make_topics(topics, "order")
    database.insert(support.backlog(5, 2))
    assert invoke()["published"] == 5
    # What a lease takeover or a redrive does: the same events are published again.
    database.query("UPDATE outbox SET status = 'PENDING'")
    assert invoke()["published"] == 5
    topic = topics.name("order")

    consumer = IdempotentConsumer(database.conn)
    consumer.ensure_table()
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE totals (aggregate_id VARCHAR(64) PRIMARY KEY, events INT)")

    def apply(conn: Any, record: Any) -> None:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO totals VALUES (%s, 1) ON DUPLICATE KEY UPDATE events = events + 1",
                (record.key.decode(),),
            )

    kafka = KafkaConsumer(bootstrap_servers=[support.KAFKA], enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(kafka.partitions_for_topic(topic) or ())]
    kafka.assign(partitions)
    kafka.seek_to_beginning(*partitions)
    records: list[Any] = []
    while len(records) < 10:
        for batch in kafka.poll(timeout_ms=1000).values():
            records += batch
    kafka.close()

    outcomes = [consumer.process(r, apply) for r in records]
    consumer.close()

    assert len(records) == 10 and outcomes.count(True) == 5 and outcomes.count(False) == 5
    totals = dict(database.query("SELECT aggregate_id, events FROM totals"))
    expected: dict[str, int] = {}
    for e in support.backlog(5, 2):
        expected[e.aggregate_id] = expected.get(e.aggregate_id, 0) + 1
    assert totals == expected, "each event's effect applied exactly once"
    assert database.query("SELECT COUNT(*) FROM processed_events") == [(5,)]


def test_consumer_helper_rolls_back_a_failed_apply_so_a_retry_processes_it(
    database: support.Database,
) -> None:
    record = FakeRecord("t", 0, 7, (("id", b"0b6c7c1e-0000-4000-8000-000000000001"),))

    consumer = IdempotentConsumer(database.conn)
    consumer.ensure_table()

    def boom(conn: Any, record: Any) -> None:
        raise RuntimeError("downstream failed")

    with pytest.raises(RuntimeError):
        consumer.process(record, boom)
    assert consumer.process(record, lambda conn, record: None) is True
    assert consumer.process(record, lambda conn, record: None) is False

    foreign = FakeRecord("t", 0, 8, (("other", b"x"),))
    with pytest.raises(MissingEventId, match="has no 'id' header"):
        consumer.process(foreign, lambda conn, record: None)
    consumer.close()
