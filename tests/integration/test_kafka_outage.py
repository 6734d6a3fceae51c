"""Guarantee: a broker outage is nobody's fault: rows stay PENDING, attempts unchanged, and
drain once Kafka is back."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from outbox_relay.publisher_kafka import KafkaPublisher
from tests import support
from tests.conftest import make_topics


def test_kafka_killed_mid_run_leaves_rows_pending_with_attempts_unchanged_then_drains(
    database: support.Database, topics: support.Topics, invoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = support.backlog(5_000, 100)
    database.insert(events)
    make_topics(topics, "order")
    original = KafkaPublisher.send
    calls = {"n": 0}
    killer: list[threading.Thread] = []

    def send_then_crash_broker(self: KafkaPublisher, messages: Any, deadline: float) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch is in flight when the broker dies
            killer.append(threading.Thread(target=support.stack, args=("kill", "kafka")))
            killer[0].start()
        return original(self, messages, deadline)

    monkeypatch.setattr(KafkaPublisher, "send", send_then_crash_broker)
    fast_failure = {
        "KAFKA_REQUEST_TIMEOUT_MS": "2000",
        "KAFKA_DELIVERY_TIMEOUT_MS": "4000",
        "KAFKA_MAX_BLOCK_MS": "2000",
        "OUTBOX_BATCH_SIZE": "100",
    }
    try:
        summary = invoke(timeout=60, **fast_failure)
        killer[0].join()

        assert not summary["ok"] and summary["stopped_by"] == "kafka_unavailable", summary
        assert "kafka unavailable" in summary["error"]
        rows = database.rows()
        pending = [r for r in rows if r["status"] == "PENDING"]
        assert 0 < len(pending) < 5_000 - 1
        assert summary["pending"] == len(pending)
        assert all(r["attempts"] == 0 and not r["backing_off"] for r in pending), "an outage is no attempt"
        assert {r["status"] for r in rows} == {"PUBLISHED", "PENDING"}
        assert summary["dead_lettered"] == 0 and summary["retried"] == 0
    finally:
        support.stack("up", "kafka")

    monkeypatch.setattr(KafkaPublisher, "send", original)
    after = invoke(timeout=60)

    assert after["ok"] and after["pending"] == 0, after
    assert database.status_counts() == {"PUBLISHED": 5_000}
    delivered = support.Delivered(topics.read("order"))
    assert len(delivered.copies()) == 5_000, "nothing lost"
    assert delivered.order_violations() == 0
