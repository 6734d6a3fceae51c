"""Guarantees: no loss, per-aggregate order, the message contract (key, headers, topic)."""

from __future__ import annotations

import json
from typing import Any

from tests import support
from tests.conftest import make_topics


def test_10k_rows_over_200_aggregates_drain_in_order_with_key_and_headers(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    events = support.backlog(10_000, 200)
    database.insert(events)
    make_topics(topics, "order")

    summary = invoke(timeout=120)

    assert summary["ok"], summary
    assert summary["published"] == 10_000
    assert summary["pending"] == 0
    assert summary["oldest_pending_age_seconds"] == 0
    assert database.status_counts() == {"PUBLISHED": 10_000}

    records = topics.read("order")
    delivered = support.Delivered(records)
    assert len(records) == 10_000
    assert set(delivered.copies().values()) == {1}, "no faults: every event exactly once"
    expected: dict[str, list[int]] = {}
    for e in events:
        expected.setdefault(e.aggregate_id, []).append(e.seq or 0)
    got = delivered.last_copy_sequences()
    assert {key.decode(): seqs for (_, key), seqs in got.items() if key} == expected
    assert delivered.order_violations() == 0

    rows = {r[0]: r for r in database.query("SELECT event_id, aggregate_id, event_type, payload FROM outbox")}
    for r in records:
        event_id = r.headers["id"].decode()
        _, aggregate_id, event_type, payload = rows[event_id]
        assert r.topic == topics.name("order")
        assert r.key == aggregate_id.encode()
        assert r.value == payload, "value is the payload bytes as stored"
        assert r.headers["event_type"] == event_type.encode()
        assert r.headers["aggregate_type"] == b"order"
        assert json.loads(r.value or b"")["n"] == int(r.headers["seq"])


def test_writer_contract_four_columns_make_a_complete_event(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)"
            " VALUES ('customer', 'c-1', 'CustomerRegistered', '{\"name\": \"Ada\"}')"
        )
    (row,) = database.query("SELECT event_id, status, created_at IS NOT NULL, attempts FROM outbox")
    assert len(row[0]) == 36 and row[1:] == ("PENDING", 1, 0)
    make_topics(topics, "customer")

    assert invoke()["published"] == 1

    (record,) = topics.read("customer")
    assert record.key == b"c-1" and record.value == b'{"name": "Ada"}'
    assert record.headers == {
        "id": row[0].encode(),
        "event_type": b"CustomerRegistered",
        "aggregate_type": b"customer",
    }
