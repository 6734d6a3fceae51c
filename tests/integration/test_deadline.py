"""Guarantee: the relay stops before the Lambda deadline, and releases what it did not finish
(after a grace period when sends might still land), so no row stays stuck past its lease."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.model import FinalizePlan, RetryDecision
from outbox_relay.ports import StoreUnavailable
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import PAST_DEADLINE_SECONDS, PING_SECONDS, MySQLOutboxStore
from tests import support
from tests.conftest import make_topics


def test_two_second_deadline_with_a_slow_broker_returns_in_time_and_leaves_nothing_stuck(
    database: support.Database, topics: support.Topics, invoke: Any, slow_broker: support.DelayProxy
) -> None:
    make_topics(topics, "order", "warmup")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{support.SLOW_KAFKA_PROXY_PORT}",
        "OUTBOX_LEASE_MARGIN_SECONDS": "3",
        # The grace after a run in doubt is at least the request timeout: 3 s, as the margin.
        "KAFKA_REQUEST_TIMEOUT_MS": "3000",
    }
    # Warm up through the proxy while it is fast: the producer is connected and has metadata.
    database.insert(support.backlog(10, 5, aggregate_type="warmup"))
    assert invoke(timeout=30, **env)["published"] == 10

    slow_broker.delay = 5.0  # every answer from the broker now takes 5 s
    database.insert(support.backlog(500, 50))
    started = time.monotonic()
    summary = invoke(timeout=2.0, **env)
    elapsed = time.monotonic() - started
    (db_now,) = database.query("SELECT UTC_TIMESTAMP(6)")[0]

    print(f"\nhandler returned after {elapsed:.2f}s of its 2 s")
    assert elapsed < 2.0, f"the handler returned after {elapsed:.2f}s with a 2 s deadline"
    assert not summary["ok"] and summary["stopped_by"] == "kafka_unavailable", summary
    assert summary["published"] == 0
    rows = [r for r in database.rows() if r["status"] == "PENDING"]
    assert len(rows) == 500 and all(r["attempts"] == 0 for r in rows), "a slow broker is no attempt"
    leases = database.query(
        "SELECT shard, lease_token IS NULL, TIMESTAMPDIFF(MICROSECOND, %s, lease_until) / 1e6"
        " FROM outbox_shard",
        db_now,
    )
    assert all(released for _, released, _ in leases), "every shard was given back"
    assert max(float(left) for *_, left in leases) <= 3.0, "fenced for the grace period at most"

    # Once the grace period is over, the next invocation takes every shard and drains.
    slow_broker.delay = 0.0
    time.sleep(3.0)
    after = invoke(timeout=30, **env)
    assert after["ok"] and after["shards"] == 16 and after["pending"] == 0, after
    delivered = support.Delivered(topics.read("order", "warmup"))
    assert len(delivered.copies()) == 510
    assert delivered.order_violations() == 0


# --- every database wait is bounded by the run's deadline -----------------------------------


@pytest.fixture
def db_proxy() -> Iterator[support.DelayProxy]:
    """MariaDB behind a proxy whose ``delay`` holds back every chunk the server sends."""
    proxy = support.DelayProxy(port=0, upstream=("127.0.0.1", support.DB_PORT))
    yield proxy
    proxy.close()


def _store_through(proxy: support.DelayProxy, relay_env: dict[str, str]) -> MySQLOutboxStore:
    """A store connected through ``proxy``, its connections bounded as the runtime bounds them."""
    config = load_config(relay_env)
    host, port = proxy.url.removeprefix("http://").split(":")
    settings = dataclasses.replace(config.database, host=host, port=int(port))
    stores: list[MySQLOutboxStore] = []

    def time_left() -> float:
        return stores[0].statement_timeout()

    store = MySQLOutboxStore(connector(settings, timeout=time_left), OutboxSql())
    stores.append(store)
    store.shard_ids()  # connected while the proxy is fast, with no deadline: 30 s socket timeouts
    return store


def test_a_warm_connections_ping_is_bounded_by_this_runs_deadline_not_the_last_runs_timeouts(
    database: support.Database, relay_env: dict[str, str], db_proxy: support.DelayProxy
) -> None:
    store = _store_through(db_proxy, relay_env)
    db_proxy.delay = 20.0  # the peer vanished: nothing comes back for 20 s
    store.deadline = time.monotonic() + 10.0
    started = time.monotonic()
    store.check()
    seconds = time.monotonic() - started
    assert seconds < PING_SECONDS + 0.5, f"the ping blocked {seconds:.1f} s"
    assert store._conn is None, "the stale connection was dropped"

    # Past the deadline there is no time to ping at all.
    db_proxy.delay = 0.0
    store = _store_through(db_proxy, relay_env)
    store.deadline = time.monotonic() - 1.0
    store.check()
    assert store._conn is None


def _lease_everything(database: support.Database, relay_env: dict[str, str], token: bytes) -> list[int]:
    store = MySQLOutboxStore(connector(load_config(relay_env).database), OutboxSql())
    shards = store.acquire_shards(token, "test", 60.0, 0, ())
    store.close()
    return shards


@pytest.mark.parametrize("operation", ["read", "acquire", "finalize"])
def test_a_server_that_trickles_its_answers_is_cut_at_the_deadline(
    database: support.Database, relay_env: dict[str, str], db_proxy: support.DelayProxy, operation: str
) -> None:
    """Every chunk the server sends comes 0.7 s late: never past a socket timeout (1.5 s), but a
    call of many chunks or round trips would be.  Each operation ends by the deadline plus half a
    second, and a finalize cut half-way leaves nothing changed (its transaction rolls back)."""
    database.insert(support.backlog(400, 40, size=4000))
    rows = database.rows()
    token = uuid.uuid4().bytes
    shards = _lease_everything(database, relay_env, token) if operation == "finalize" else []
    store = _store_through(db_proxy, relay_env)
    db_proxy.delay = 0.7
    store.deadline = time.monotonic() + 1.0
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        if operation == "read":
            store.read_heads(dict.fromkeys(range(16), 0), 100)
        elif operation == "acquire":
            store.acquire_shards(uuid.uuid4().bytes, "test", 60.0, 0, ())
        else:
            plan = FinalizePlan(
                retries=[RetryDecision(r["id"], 5.0, "boom", True, 0) for r in rows[:300]],
                dead=[(r["id"], "poison") for r in rows[300:]],
            )
            store.finalize(token, shards, plan, 60.0)
    seconds = time.monotonic() - started
    assert seconds < 1.0 + PAST_DEADLINE_SECONDS + 0.3, f"{operation} took {seconds:.1f} s"
    assert support.wait_until(lambda: database.rows() == rows, timeout=10), "nothing was half-applied"


def test_a_warm_process_whose_database_vanished_returns_within_the_invocations_deadline(
    database: support.Database, invoke: Any, db_proxy: support.DelayProxy
) -> None:
    """Through the handler: bound() comes before the warm connections' check, so the ping waits
    on this invocation's deadline, not on the 30 s the warm run left on the socket."""
    port = db_proxy.url.rsplit(":", 1)[1]
    database.insert(support.backlog(5, 2, aggregate_type="nowhere"))
    assert invoke(timeout=30, OUTBOX_DB_PORT=port)["ok"] is not None  # warm: both stores connected
    db_proxy.delay = 20.0
    started = time.monotonic()
    summary = invoke(timeout=4, OUTBOX_DB_PORT=port)
    seconds = time.monotonic() - started
    assert seconds < 4.0, f"the handler returned after {seconds:.1f} s of its 4 s"
    assert summary["stopped_by"] == "database_unavailable", summary
