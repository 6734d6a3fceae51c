"""Guarantee: the relay stops before the Lambda deadline, and releases what it did not finish
(after a grace period when sends might still land), so no row stays stuck past its lease."""

from __future__ import annotations

import time
from typing import Any

from tests import support
from tests.conftest import make_topics


def test_two_second_deadline_with_a_slow_broker_returns_in_time_and_leaves_nothing_stuck(
    database: support.Database, topics: support.Topics, invoke: Any, slow_broker: support.DelayProxy
) -> None:
    make_topics(topics, "order", "warmup")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{support.SLOW_KAFKA_PROXY_PORT}",
        "OUTBOX_LEASE_MARGIN_SECONDS": "3",
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
