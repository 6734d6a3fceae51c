"""The consumer helper's key on the real MariaDB: any ``id`` header bytes are either an exact
key (distinct events never collide, duplicates are recognised) or refused with nothing written,
in a strict session or not; old tables are upgraded in place."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay.consumer import IdempotentConsumer, InvalidEventId
from outbox_relay.sql import ProcessedEventsSql
from tests import support

TOPICS = ("orders.events", "billing.events")

# The table as the first version of the helper created it (event_id alone was the key).
OLD_CREATE = (
    "CREATE TABLE `processed_events` ("
    " event_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,"
    " topic VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,"
    " kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL,"
    " processed_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),"
    " KEY ix_processed_at (processed_at)) ENGINE = InnoDB"
)
OLD_CLAIM = (
    "INSERT IGNORE INTO `processed_events` (event_id, topic, kafka_partition, kafka_offset)"
    " VALUES (%s, %s, 0, 0)"
)


Record = support.ConsumerRecord


def record(raw: bytes, topic: str = TOPICS[0], offset: int = 0) -> Record:
    return Record(topic, 0, offset, (("id", raw), ("event_type", b"E")))


def valid(raw: bytes) -> bool:
    """The contract, spelled independently of the implementation."""
    return 1 <= len(raw) <= 36 and all(32 <= b <= 126 for b in raw)


def connector(database: support.Database, sql_mode: str | None) -> Callable[[], Any]:
    def connect() -> Any:
        conn = database.conn()
        if sql_mode is not None:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
        return conn

    return connect


def noop(conn: Any, record: Any) -> None:
    return None


_PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=36)
VALID = _PRINTABLE.map(str.encode)
# Ids the first version cut, mangled or padded into another event's key.
NEAR_MISSES = st.one_of(
    VALID.map(lambda b: (b * 37)[:37]),  # one byte too long: was truncated to 36
    VALID.map(lambda b: b[:35] + "é".encode()),  # non-ASCII: was mangled to '?'
    VALID.map(lambda b: b[:35] + b"?"),  # what the line above used to become
    VALID.map(lambda b: b[:35] + b" "),  # trailing blank: equal to b[:35] under PAD SPACE
    VALID.map(lambda b: b[:34] + b"\x00"),  # control characters
    VALID.map(lambda b: b.swapcase()),  # case: distinct ids
)
HEADERS = st.one_of(VALID, NEAR_MISSES, st.binary(max_size=40))


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[bytes, str]]:
    """Headers drawn from a small pool on two topics, so repeats (redeliveries) are common."""
    pool = draw(st.lists(HEADERS, min_size=1, max_size=10))
    return draw(st.lists(st.tuples(st.sampled_from(pool), st.sampled_from(TOPICS)), min_size=1, max_size=25))


@pytest.mark.parametrize("sql_mode", [None, ""], ids=["strict-session", "non-strict-session"])
@pytest.mark.parametrize("scope", [None, "orders-outbox"], ids=["scope=topic", "scope=fixed"])
def test_any_id_header_is_an_exact_key_or_refused_with_nothing_written(
    database: support.Database, scope: str | None, sql_mode: str | None
) -> None:
    consumer = IdempotentConsumer(connector(database, sql_mode), scope=scope)
    consumer.ensure_table()
    conn = consumer.connection()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE effects (kafka_offset INT PRIMARY KEY) ENGINE = InnoDB")
    conn.commit()

    def apply(conn: Any, record: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO effects VALUES (%s)", (record.offset,))

    def count() -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM processed_events")
            (n,) = cur.fetchone()
        conn.commit()
        return int(n)

    @settings(max_examples=60, deadline=None)
    @given(deliveries())
    def check(sent: list[tuple[bytes, str]]) -> None:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM processed_events")
            cur.execute("DELETE FROM effects")
        conn.commit()
        seen: set[tuple[bytes, bytes]] = set()
        applied: list[int] = []
        for offset, (raw, topic) in enumerate(sent):
            if not valid(raw):
                with pytest.raises(InvalidEventId, match=rf"^{topic}\[0\]@{offset} "):
                    consumer.process(record(raw, topic, offset), apply)
                assert count() == len(seen), "a refused id wrote nothing"
                continue
            key = ((scope or topic).encode(), raw)
            fresh = consumer.process(record(raw, topic, offset), apply)
            assert fresh is (key not in seen), f"{key!r}: {'collided' if key not in seen else 'repeated'}"
            seen.add(key)
            if fresh:
                applied.append(offset)
        with conn.cursor() as cur:
            cur.execute("SELECT scope, event_id FROM processed_events")
            stored = {(bytes(s), bytes(e)) for s, e in cur.fetchall()}
            cur.execute("SELECT kafka_offset FROM effects ORDER BY kafka_offset")
            effects = [int(o) for (o,) in cur.fetchall()]
        conn.commit()
        assert stored == seen, "every key stored byte for byte, no other"
        assert effects == applied, "each event's effect applied once, with its key"

    check()
    consumer.close()


def test_ids_the_first_version_confused_are_kept_apart_or_refused(database: support.Database) -> None:
    consumer = IdempotentConsumer(database.conn)
    consumer.ensure_table()
    prefix = b"a" * 35
    assert consumer.process(record(prefix), noop) is True
    assert consumer.process(record(prefix + b" "), noop) is True, "not equal under PAD SPACE any more"
    assert consumer.process(record(prefix + b"?"), noop) is True
    for raw in (prefix + b"bc", prefix + "é".encode()):  # were cut / mangled onto keys above
        with pytest.raises(InvalidEventId):
            consumer.process(record(raw), noop)
    assert consumer.process(record(prefix, TOPICS[1]), noop) is True, "another topic, another scope"
    assert consumer.process(record(prefix + b" "), noop) is False
    consumer.close()
    assert database.query("SELECT COUNT(*) FROM processed_events") == [(4,)]


def test_another_integrity_error_propagates_and_nothing_is_recorded(database: support.Database) -> None:
    consumer = IdempotentConsumer(database.conn)
    consumer.ensure_table()
    # An application's own constraint on the table: breaking it is not a duplicate.
    database.query(
        "CREATE TABLE known_topics"
        " (name VARCHAR(249) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY) ENGINE = InnoDB"
    )
    database.query(
        "ALTER TABLE processed_events"
        " ADD CONSTRAINT fk_topic FOREIGN KEY (topic) REFERENCES known_topics (name)"
    )
    applied: list[int] = []
    with pytest.raises(pymysql.err.IntegrityError) as caught:
        consumer.process(record(b"e-1"), lambda c, r: applied.append(r.offset))
    assert caught.value.args[0] == 1452 and applied == []
    assert database.query("SELECT COUNT(*) FROM processed_events") == [(0,)]
    database.query("INSERT INTO known_topics VALUES (%s)", TOPICS[0])
    assert consumer.process(record(b"e-1"), lambda c, r: applied.append(r.offset)) is True
    consumer.close()


@pytest.mark.parametrize("first_fails", [False, True], ids=["first-commits", "first-rolls-back"])
def test_a_concurrent_duplicate_waits_for_the_first_transaction(
    database: support.Database, first_fails: bool
) -> None:
    first, second = IdempotentConsumer(database.conn), IdempotentConsumer(database.conn)
    first.ensure_table()
    claimed = threading.Event()
    outcome: list[bool | None] = []

    def slow_apply(conn: Any, record: Any) -> None:
        claimed.set()
        time.sleep(0.5)  # the second consumer's INSERT is now waiting on the key's lock
        if first_fails:
            raise RuntimeError("downstream failed")

    def run_first() -> None:
        try:
            outcome.append(first.process(record(b"e-1"), slow_apply))
        except RuntimeError:
            outcome.append(None)

    thread = threading.Thread(target=run_first)
    thread.start()
    assert claimed.wait(10)
    again = second.process(record(b"e-1"), noop)
    thread.join(10)
    # Rolled back: the second consumer's INSERT then succeeds; committed: it is a duplicate.
    assert (outcome, again) == (([None], True) if first_fails else ([True], False))
    first.close()
    second.close()


def _shape(database: support.Database) -> str:
    (_, create), *_ = database.query("SHOW CREATE TABLE processed_events")
    return str(create)


@pytest.mark.parametrize("scope", [None, "orders-outbox"])
def test_an_old_table_is_upgraded_in_place(database: support.Database, scope: str | None) -> None:
    database.query(ProcessedEventsSql("fresh_layout").create)
    (_, fresh_create), *_ = database.query("SHOW CREATE TABLE fresh_layout")
    expected = str(fresh_create).replace("fresh_layout", "processed_events")

    database.query(OLD_CREATE)
    database.query(OLD_CLAIM, "e-1", TOPICS[0])
    database.query(OLD_CLAIM, "e-2", TOPICS[1])
    consumer = IdempotentConsumer(database.conn, scope=scope)
    consumer.ensure_table()
    assert _shape(database) == expected
    rows = set(database.query("SELECT scope, event_id, topic FROM processed_events"))
    scopes = [TOPICS[0], TOPICS[1]] if scope is None else [scope, scope]
    assert rows == {
        (scopes[0].encode(), b"e-1", TOPICS[0]),
        (scopes[1].encode(), b"e-2", TOPICS[1]),
    }, "old rows keep counting as processed, under this consumer's scope"
    assert consumer.process(record(b"e-1", TOPICS[0]), noop) is False
    assert consumer.process(record(b"e-2", TOPICS[1]), noop) is False
    assert consumer.process(record(b"e-1", TOPICS[1]), noop) is (scope is None)
    consumer.ensure_table()  # idempotent
    assert _shape(database) == expected
    consumer.close()


def test_an_upgrade_cut_off_half_way_completes_on_the_next_start(database: support.Database) -> None:
    sql = ProcessedEventsSql()
    database.query(OLD_CREATE)
    database.query(OLD_CLAIM, "e-1", TOPICS[0])
    database.query(sql.add_scope)  # the process died after the first DDL statement
    consumer = IdempotentConsumer(database.conn)
    consumer.ensure_table()
    assert database.query("SELECT scope, event_id FROM processed_events") == [(TOPICS[0].encode(), b"e-1")]
    assert consumer.process(record(b"e-1"), noop) is False
    consumer.close()
