"""The relay core's rules on the real database, with a scripted publisher where Kafka would
need to misbehave on cue (the same behaviours are shown against the real broker elsewhere)."""

from __future__ import annotations

import dataclasses
import random
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import boto3
import pymysql

from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.deadletter_sqs import SqsDeadLetterSink
from outbox_relay.model import Delivery, Message, SendResult
from outbox_relay.ports import NullMetrics, Settled, SystemClock
from outbox_relay.relay import Relay
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore
from tests import support


class ScriptedPublisher:
    """Answers each message with ``script(message)``; records what was sent, in order."""

    def __init__(self, script: Callable[[Message], Delivery]) -> None:
        self.script = script
        self.sent: list[Message] = []
        self.in_doubt = False

    def send(self, messages: Sequence[Message], deadline: float) -> Settled:
        self.sent += messages
        return Settled(
            [
                SendResult(d, "" if d is Delivery.DELIVERED else f"scripted {d.value}")
                for d in map(self.script, messages)
            ]
        )

    def new_run(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_relay(env: dict[str, str], publisher: Any, dlq_url: str | None = None, **settings: Any) -> Relay:
    config = load_config(env)
    store = MySQLOutboxStore(connector(config.database), OutboxSql())
    sink = SqsDeadLetterSink(boto3.client("sqs", endpoint_url=support.MOTO), dlq_url or config.dlq_queue_url)
    relay_settings = dataclasses.replace(config.relay, **settings)
    return Relay(
        store, publisher, sink, NullMetrics(), SystemClock(), relay_settings, "test", random.Random(5)
    )


def run(relay: Relay) -> Any:
    return relay.run(time.monotonic() + 30)


def ids_of(database: support.Database, aggregate_id: str) -> list[int]:
    return [
        r[0]
        for r in database.query("SELECT id FROM outbox WHERE aggregate_id = %s ORDER BY id", aggregate_id)
    ]


def test_a_failed_row_backs_off_by_the_database_clock_and_its_successors_wait(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    database.insert(
        [support.Event("order", "A", "e", b"{}", seq=n) for n in (1, 2, 3)]
        + [support.Event("order", "B", "e", b"{}", seq=n) for n in (1, 2)]
    )
    a1, a2, a3 = ids_of(database, "A")
    failing = {a2}
    publisher = ScriptedPublisher(lambda m: Delivery.RETRY if m.record_id in failing else Delivery.DELIVERED)
    relay = make_relay(relay_env, publisher, backoff_base_seconds=1.0, backoff_max_seconds=1.0)

    summary = run(relay)

    assert (summary.published, summary.retried) == (3, 1)  # A1, B1, B2 / A2
    rows = {r["id"]: r for r in database.rows()}
    assert rows[a1]["status"] == "PUBLISHED"
    assert rows[a2]["status"] == "PENDING" and rows[a2]["attempts"] == 1 and rows[a2]["backing_off"]
    assert rows[a2]["last_error"] == "scripted retry"
    assert rows[a3]["status"] == "PENDING" and rows[a3]["attempts"] == 0, "a successor is never charged"
    (wait,) = database.query(
        "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), available_at) / 1e6 FROM outbox WHERE id = %s",
        a2,
    )[0]
    assert 0 < float(wait) <= 2.0, "full jitter within [0, base·2¹], computed by the database"

    sent_before = len(publisher.sent)
    assert run(relay).published == 0, "not retried before it is due, and A3 waits behind A2"
    assert len(publisher.sent) == sent_before

    failing.clear()
    time.sleep(float(wait) + 0.05)
    assert run(relay).published == 2
    order = [m.record_id for m in publisher.sent if m.key == b"A"]
    assert order == [a1, a2, a3, a2, a3], "A3 was sent in the failed pass, and again after A2"
    assert database.status_counts() == {"PUBLISHED": 5}


def test_a_row_that_keeps_failing_is_dead_lettered_after_max_attempts(
    database: support.Database, relay_env: dict[str, str], dlq: support.Queue
) -> None:
    database.insert(
        [support.Event("order", "A", "e", b'{"n": 1}', seq=1), support.Event("order", "B", "e", b"{}")]
    )
    relay = make_relay(
        relay_env,
        ScriptedPublisher(lambda m: Delivery.RETRY if m.key == b"A" else Delivery.DELIVERED),
        max_attempts=3,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.02,
    )
    for _ in range(3):
        run(relay)
        time.sleep(0.05)

    rows = {r["aggregate_id"]: r for r in database.rows()}
    assert rows["A"]["status"] == "DEAD" and rows["A"]["attempts"] == 2
    assert rows["A"]["last_error"] == "gave up after 3 attempts: scripted retry"
    assert rows["B"]["status"] == "PUBLISHED"
    (letter,) = dlq.messages()
    assert letter["reason"] == rows["A"]["last_error"] and letter["payload"] == '{"n": 1}'
    assert letter["topic"] == "outbox.event.order" or letter["topic"].endswith(".order")


def test_dead_letter_queue_down_keeps_the_row_pending_never_dead(
    database: support.Database, relay_env: dict[str, str], dlq: support.Queue
) -> None:
    database.insert([support.Event("order", "A", "e", b"not json"), support.Event("order", "A", "e", b"{}")])
    missing_queue = dlq.url.rsplit("/", 1)[0] + "/no-such-queue"
    publisher = ScriptedPublisher(lambda m: Delivery.DELIVERED)
    relay = make_relay(relay_env, publisher, dlq_url=missing_queue)

    summary = run(relay)

    assert (summary.dead_lettered, summary.retried, summary.published) == (0, 1, 0)
    first, second = database.rows()
    assert first["status"] == "PENDING" and first["attempts"] == 0 and first["backing_off"]
    assert first["last_error"].startswith("dead-letter queue: ")
    assert second["status"] == "PENDING" and publisher.sent == [], "A's next event waits for its head"
    assert dlq.messages() == []


def test_shard_column_equals_zlib_crc32_mod_16(database: support.Database) -> None:
    rng = random.Random(11)
    ids = [f"{rng.choice(['order', 'ü', '客户', 'x'])}-{rng.randrange(10**9)}" for _ in range(300)]
    database.insert([support.Event("t", i, "e", b"{}") for i in ids])
    for aggregate_id, shard in database.query("SELECT aggregate_id, shard FROM outbox"):
        assert shard == zlib.crc32(aggregate_id.encode()) % 16


def test_a_lower_id_committed_late_is_published_on_the_next_pass(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    slow = database.conn()
    slow.autocommit(False)
    with slow.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('t','A','e','{}')"
        )
    database.insert([support.Event("t", "B", "e", b"{}")])
    publisher = ScriptedPublisher(lambda m: Delivery.DELIVERED)
    relay = make_relay(relay_env, publisher)

    assert run(relay).published == 1
    slow.commit()
    slow.close()
    assert run(relay).published == 1
    assert [m.key for m in publisher.sent] == [b"B", b"A"], "nothing skipped by a watermark"


def test_an_open_finalize_transaction_does_not_block_application_inserts(database: support.Database) -> None:
    database.insert([support.Event("t", f"k{i}", "e", b"{}") for i in range(50)])
    store = MySQLOutboxStore(lambda: support.connect(database.name), OutboxSql())
    token = b"0123456789abcdef"
    assert len(store.acquire_shards(token, "holder", 60, 0, ())) == 16
    relay_conn = store._connection()
    relay_conn.begin()
    with relay_conn.cursor() as cur:
        sql = OutboxSql()
        cur.execute(sql.lock_shards(16), list(range(16)))
        ids = [r[0] for r in database.query("SELECT id FROM outbox ORDER BY id LIMIT 25")]
        cur.execute(sql.mark_published(len(ids), 16), [*ids, *range(16)])
    app = pymysql.connect(
        host=support.DB_HOST,
        user=support.DB_USER,
        password=support.DB_PASSWORD,
        database=database.name,
        autocommit=True,
    )
    try:
        with app.cursor() as cur:
            cur.execute("SET SESSION innodb_lock_wait_timeout = 2")
            started = time.monotonic()
            cur.execute(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)"
                " VALUES ('t', 'k1', 'e', '{}')"
            )
            assert time.monotonic() - started < 0.5
    finally:
        app.close()
        relay_conn.rollback()
        store.close()


def test_shards_stay_fenced_as_long_as_a_record_given_up_on_may_still_land(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    """Found by the simulation (tests/sim): with OUTBOX_LEASE_MARGIN_SECONDS shorter than Kafka's
    request timeout, a record the broker still held was appended after another run had taken the
    shards and sent its aggregate again: an older event's copy after a newer one's.  The grace
    after a run in doubt (and the lease) is at least what the publisher says (doubt_seconds)."""
    database.insert([support.Event("t", "A", "e", b"{}")])
    publisher = ScriptedPublisher(lambda m: Delivery.DELIVERED)
    publisher.in_doubt = True  # as after a wait the deadline cut short
    publisher.doubt_seconds = 6.0  # type: ignore[attr-defined]
    relay = make_relay(relay_env, publisher, lease_margin_seconds=1.0)
    assert run(relay).published == 1
    ((fenced,),) = database.query(
        "SELECT MIN(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until)) / 1e6 FROM outbox_shard"
    )
    assert float(fenced) > 4.0, f"fenced for {float(fenced):.1f} s only"
