"""Liveness on the real stack: one blocked aggregate, one missing topic, one busy shard row or one
lost COMMIT answer never stops the other rows, and never charges a row twice."""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from typing import Any

import pymysql
import pytest

from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.model import FinalizePlan, RetryDecision
from outbox_relay.ports import StoreUnavailable
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore
from tests import support
from tests.conftest import make_topics


def same_shard(aggregate_id: str, count: int, prefix: str) -> list[str]:
    shard = zlib.crc32(aggregate_id.encode()) % 16
    out: list[str] = []
    n = 0
    while len(out) < count:
        candidate = f"{prefix}-{n}"
        if zlib.crc32(candidate.encode()) % 16 == shard:
            out.append(candidate)
        n += 1
    return out


def emf_metric(output: str, name: str) -> list[float]:
    values: list[float] = []
    for line in output.splitlines():
        if line.startswith('{"_aws"'):
            doc = json.loads(line)
            if name in doc:
                values += doc[name]
    return values


def test_a_blocked_aggregate_with_a_long_backlog_does_not_starve_its_shard(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    """30,000 rows behind one head in backoff: with 500-row pages that is 60 pages, more than
    the old page-by-page skip (50 pages) ever looked past.  The victims behind them in the same
    shard go out in the first run, in a few passes, and the summary names the hog."""
    make_topics(topics, "order")
    hog = "hog-1"
    victims = same_shard(hog, 5, "victim")
    backlog = 30_000
    database.insert([support.Event("order", hog, "Changed", b"{}", seq=n) for n in range(1, backlog + 1)])
    database.insert([support.Event("order", v, "Changed", b"{}", seq=n) for v in victims for n in (1, 2, 3)])
    database.query(
        "UPDATE outbox SET attempts = 3, last_error = 'broker said no',"
        " available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE aggregate_id = %s ORDER BY id LIMIT 1",
        hog,
    )

    summary = invoke(OUTBOX_BATCH_SIZE="500")

    assert summary["ok"] and summary["published"] == 15, summary
    assert summary["passes"] <= 6, summary  # skipped in the read, not paged past
    assert summary["blocked_aggregates"] == 1
    assert summary["blocked"] == [
        {"aggregate_type": "order", "aggregate_id": hog, "reason": "backing off after attempt 3"}
    ]
    assert database.status_counts() == {"PENDING": backlog, "PUBLISHED": 15}
    sequences: dict[str, list[int]] = {}
    for record in topics.read("order"):
        sequences.setdefault((record.key or b"").decode(), []).append(int(record.headers["seq"]))
    assert sequences == {v: [1, 2, 3] for v in victims}


def test_many_blocked_aggregates_in_one_shard_let_the_rest_through(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    """More blocked aggregates than one read leaves out by name (``MAX_SKIPPED_KEYS``): the rest
    of the shard is still reached, by reading it by aggregate heads."""
    make_topics(topics, "order")
    blocked = same_shard("b", 150, "blocked")
    victims = same_shard("b", 153, "blocked")[150:]  # the same shard, after them
    database.insert([support.Event("order", b, "Changed", b"{}", seq=n) for b in blocked for n in (1, 2)])
    database.insert([support.Event("order", v, "Changed", b"{}", seq=1) for v in victims])
    database.query(
        "UPDATE outbox SET available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, attempts = 1"
        " WHERE aggregate_id LIKE 'blocked-%%' AND seq = 1 AND aggregate_id NOT IN (%s, %s, %s)",
        *victims,
    )

    summary = invoke(OUTBOX_BATCH_SIZE="50")

    assert summary["ok"] and summary["published"] == 3, summary
    # Read by heads, the run meets the blocked aggregates due soonest, a page's worth per read.
    assert 20 <= summary["blocked_aggregates"] <= 150 and len(summary["blocked"]) == 20


def test_a_missing_topic_holds_its_rows_back_uncharged_while_every_other_topic_flows(
    database: support.Database, topics: support.Topics, invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    make_topics(topics, "order")
    database.insert(
        [support.Event("ghost", f"g-{n % 3}", "Changed", b"{}", seq=n) for n in range(1, 10)]
        + [support.Event("order", f"o-{n % 4}", "Changed", b"{}", seq=n) for n in range(1, 41)]
    )

    started = time.monotonic()
    first = invoke(OUTBOX_BACKOFF_MAX_SECONDS="2", KAFKA_MAX_BLOCK_MS="3000")
    seconds = time.monotonic() - started

    assert first["ok"] and first["published"] == 40 and first["dead_lettered"] == 0, first
    assert first["retried"] == 3 and first["topic_unavailable"] == 3, first  # one head per aggregate
    assert seconds < 8, f"one bounded metadata wait per run, not one per aggregate: {seconds:.1f} s"
    ghosts = [r for r in database.rows() if r["aggregate_id"].startswith("g-")]
    assert all(r["status"] == "PENDING" and r["attempts"] == 0 for r in ghosts), ghosts
    heads = [r for r in ghosts if r["last_error"]]
    assert len(heads) == 3 and all("ghost" in r["last_error"] for r in heads), heads
    assert emf_metric(capsys.readouterr().out, "TopicUnavailable") == [3.0]

    # The operator creates the topic: the held-back events go out, in order, none of them lost.
    make_topics(topics, "ghost")
    time.sleep(2.1)
    second = invoke(OUTBOX_BACKOFF_MAX_SECONDS="2")
    assert second["ok"] and second["published"] == 9, second
    per_key: dict[bytes | None, list[int]] = {}
    for record in topics.read("ghost"):
        per_key.setdefault(record.key, []).append(int(record.headers["seq"]))
    assert per_key == {f"g-{k}".encode(): list(range(k if k else 3, 10, 3)) for k in range(3)}


def test_reserved_and_illegal_topic_names_are_dead_lettered_not_waited_for(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    make_topics(topics, "order")
    database.insert(
        [
            support.Event("order", "a", "Changed", b"{}", seq=1, topic="__consumer_offsets"),
            support.Event("order", "a", "Changed", b"{}", seq=2),
            support.Event("order", "b", "Changed", b"{}", seq=1, topic="has space"),
        ]
    )
    summary = invoke()
    assert summary["ok"] and summary["published"] == 1 and summary["dead_lettered"] == 2, summary
    reasons = {r["aggregate_id"]: r["last_error"] for r in database.rows() if r["status"] == "DEAD"}
    assert set(reasons) == {"a", "b"} and all("not a legal Kafka topic name" in v for v in reasons.values())


def store_for(relay_env: dict[str, str], connect: Any = None) -> MySQLOutboxStore:
    config = load_config(relay_env)
    return MySQLOutboxStore(connect or connector(config.database), OutboxSql())


def test_a_finalize_retried_after_a_lost_commit_answer_charges_the_attempt_once(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    database.insert([support.Event("order", "A", "Changed", b"{}")])
    ((row_id,),) = database.query("SELECT id FROM outbox")
    base = connector(load_config(relay_env).database)
    lost = {"left": 1}

    def connect() -> Any:
        conn = base()
        commit = conn.commit

        def commit_then_lose_the_answer() -> None:
            commit()
            if lost["left"]:
                lost["left"] -= 1
                conn.close()
                raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

        conn.commit = commit_then_lose_the_answer  # type: ignore[method-assign]
        return conn

    store = store_for(relay_env, connect)
    token = uuid.uuid4().bytes
    shards = store.acquire_shards(token, "test", 30, 0, ())
    plan = FinalizePlan(retries=[RetryDecision(row_id, 0.0, "scripted", True, attempts=0)])

    store.finalize(token, shards, plan, 30)

    assert lost["left"] == 0, "the COMMIT answer was lost and the finalize ran again"
    assert database.query("SELECT attempts FROM outbox") == [(1,)]
    store.release(token, None, 0)


def test_acquiring_skips_a_shard_whose_row_is_locked_and_takes_the_others(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    busy = database.conn()
    busy.begin()
    with busy.cursor() as cur:
        cur.execute("SELECT shard FROM outbox_shard WHERE shard = 3 FOR UPDATE")
    try:
        store = store_for(relay_env)
        started = time.monotonic()
        taken = store.acquire_shards(uuid.uuid4().bytes, "test", 30, 0, ())
        seconds = time.monotonic() - started
    finally:
        busy.rollback()
        busy.close()
    assert sorted(taken) == [s for s in range(16) if s != 3]
    assert seconds < 3, f"waited {seconds:.1f} s for one busy shard"


def test_an_acquire_that_fails_half_way_leaks_no_lease(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    from outbox_relay.ports import NullMetrics, Settled, SystemClock
    from outbox_relay.relay import Relay

    inner = store_for(relay_env)

    class FailingAfterTaking(MySQLOutboxStore):
        def acquire_shards(self, *args: Any, **kwargs: Any) -> list[int]:
            inner.acquire_shards(*args, **kwargs)  # taken for real, then the answer is lost
            raise StoreUnavailable("acquire shards: (2013) Lost connection to server during query")

    class Idle:
        in_doubt = False

        def new_run(self) -> None:
            pass

        def send(self, messages: Any, deadline: float) -> Settled:
            return Settled([])

        def close(self) -> None:
            pass

    config = load_config(relay_env)
    store = FailingAfterTaking(connector(config.database), OutboxSql())
    relay = Relay(store, Idle(), _NoLetters(), NullMetrics(), SystemClock(), config.relay)

    summary = relay.run(time.monotonic() + 10)

    assert summary.stopped_by == "database_unavailable", summary
    assert database.query("SELECT COUNT(*) FROM outbox_shard WHERE lease_token IS NOT NULL") == [(0,)]


class _NoLetters:
    def send(self, letters: Any, acknowledged: Any = None) -> list[str | None]:
        raise AssertionError("no dead letters expected")


def test_a_finalize_failure_with_a_batch_on_the_wire_releases_with_grace(
    database: support.Database, topics: support.Topics, relay_env: dict[str, str]
) -> None:
    """Batch N's finalize fails while batch N+1 was handed to Kafka: the run waits for N+1 and
    keeps the shards fenced for the lease margin, so nobody re-sends N's rows while N+1's may
    still land after them."""
    from outbox_relay.ports import NullMetrics, SystemClock
    from outbox_relay.publisher_kafka import KafkaPublisher
    from outbox_relay.relay import Relay

    make_topics(topics, "order")
    database.insert(support.backlog(60, 3))
    config = load_config({**relay_env, "OUTBOX_BATCH_SIZE": "20"})
    finalize_store = store_for(relay_env)
    calls = {"n": 0}
    real_finalize = finalize_store.finalize

    def finalize(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreUnavailable("finalize: (1290) read only")
        return real_finalize(*args)

    finalize_store.finalize = finalize  # type: ignore[method-assign,assignment]
    publisher = KafkaPublisher(config.kafka)
    handed: list[Any] = []
    send = publisher.send

    class Watched:
        def __init__(self, inner: Any) -> None:
            self.inner, self.waited = inner, False

        def wait(self, deadline: float) -> Any:
            self.waited = True
            return self.inner.wait(deadline)

    def watched_send(messages: Any, deadline: float) -> Any:
        handed.append(Watched(send(messages, deadline)))
        return handed[-1]

    publisher.send = watched_send  # type: ignore[method-assign]
    relay = Relay(
        store_for(relay_env),
        publisher,
        _NoLetters(),
        NullMetrics(),
        SystemClock(),
        config.relay,
        finalize_store=finalize_store,
    )
    try:
        summary = relay.run(time.monotonic() + 20)
    finally:
        publisher.close()
    assert summary.stopped_by == "database_unavailable", summary
    assert len(handed) >= 3 and all(batch.waited for batch in handed), "a batch was left on the wire"
    ((fenced,),) = database.query(
        "SELECT COUNT(*) FROM outbox_shard WHERE lease_token IS NULL AND lease_until > UTC_TIMESTAMP(6)"
    )
    assert fenced > 0, "released with no grace while a batch may still land"


def test_the_poll_window_keeps_its_shard_list_exact_and_drains_a_late_burst_as_fast(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    """``acquire_shards`` answers with every shard the token holds: the run's list must not grow
    with each re-acquire (it did by 16 a second, shrinking every shard's page).  A burst written
    late in the window is read in as many passes as the same burst in a fresh run."""
    make_topics(topics, "order")
    burst = support.backlog(4000, 200)

    database.insert(burst, chunk=len(burst))  # one statement: the relay sees all of it at once
    fresh = invoke(OUTBOX_BATCH_SIZE="500")
    assert fresh["published"] == 4000

    def write_late() -> None:
        time.sleep(3.0)
        database.insert(burst, chunk=len(burst))

    writer = threading.Thread(target=write_late)
    writer.start()
    windowed = invoke(
        OUTBOX_BATCH_SIZE="500", OUTBOX_POLL_WINDOW_SECONDS="6", OUTBOX_POLL_INTERVAL_SECONDS="0.05"
    )
    writer.join()
    assert windowed["published"] == 4000 and windowed["shards"] == 16, windowed
    # Passes count reads that found work (a poll that finds nothing is not a pass): the late
    # burst takes as many as in a fresh run, within 10 %.
    assert windowed["passes"] <= fresh["passes"] * 1.1, (windowed, fresh)


def test_a_database_statement_never_blocks_past_the_deadline(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    """A statement that hangs (a stalled server, a lock) ends half a second past the invocation's
    deadline at most, and is not retried past it: the run ends before Lambda's timeout."""
    store = store_for(relay_env)
    store.deadline = time.monotonic() + 1.0

    def stall(conn: Any) -> Any:
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(20)")
            return cur.fetchall()

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"Lost connection|timed out"):
        store.run(stall, "stall")
    seconds = time.monotonic() - started
    assert seconds < 2.5, f"blocked {seconds:.1f} s for a deadline 1 s away"
    store.close()


def test_an_aggregate_whose_backoff_ends_during_the_run_is_sent_in_that_run(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    """A block lasts as long as the head's backoff, not the run: once due, the aggregate is read
    and sent again while the run still has other work."""
    from tests.integration.test_relay_rules import ScriptedPublisher, make_relay

    hog = same_shard("a-1", 1, "other")[0]
    database.insert([support.Event("order", "a-1", "Changed", b"{}", seq=n) for n in (1, 2, 3)])
    database.insert([support.Event("order", hog, "Changed", b"{}", seq=n) for n in range(1, 6001)])
    ((first,),) = database.query("SELECT MIN(id) FROM outbox WHERE aggregate_id = 'a-1'")
    failed: set[int] = set()

    def script(message: Any) -> Any:
        from outbox_relay.model import Delivery

        if message.record_id == first and first not in failed:
            failed.add(first)
            return Delivery.RETRY
        return Delivery.DELIVERED

    relay = make_relay(
        relay_env, ScriptedPublisher(script), batch_size=50, backoff_base_seconds=0.2, backoff_max_seconds=0.2
    )
    summary = relay.run(time.monotonic() + 30)

    assert failed == {first}
    assert summary.published == 6003 and summary.retried == 1, summary
    assert database.status_counts() == {"PUBLISHED": 6003}


def test_a_connection_that_hangs_in_its_handshake_ends_past_the_deadline_by_half_a_second_at_most(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    """A server that accepts the connection and never answers (a failing-over writer, a black
    hole): opening the connection is bounded by the deadline too, not by a 30 s read timeout."""
    import dataclasses

    proxy = support.DelayProxy(port=0, upstream=("127.0.0.1", support.DB_PORT))
    proxy.stall = True
    try:
        config = load_config(relay_env)
        host, port = proxy.url.removeprefix("http://").split(":")
        settings = dataclasses.replace(config.database, host=host, port=int(port))
        store: MySQLOutboxStore | None = None

        def timeout() -> float:
            assert store is not None
            return store.statement_timeout()

        store = MySQLOutboxStore(connector(settings, timeout=timeout), OutboxSql())
        store.deadline = time.monotonic() + 1.0
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.pending_stats()
        seconds = time.monotonic() - started
    finally:
        proxy.close()
    assert seconds < 2.5, f"connecting blocked {seconds:.1f} s for a deadline 1 s away"
