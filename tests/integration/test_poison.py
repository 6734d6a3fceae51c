"""Guarantee: poison events go to the dead-letter queue with the event and the reason, become
DEAD, and never block other aggregates."""

from __future__ import annotations

import json
from typing import Any

from tests import support
from tests.conftest import make_topics


def test_oversized_and_invalid_events_are_dead_lettered_while_other_aggregates_flow(
    database: support.Database, topics: support.Topics, dlq: support.Queue, invoke: Any
) -> None:
    make_topics(topics, "order")
    # A topic whose broker-side limit (20 kB) is far below the producer's: only the broker
    # can reject this one, which is what puts kafka-python's producer into its fatal state.
    make_topics(topics, "blob", **{"max.message.bytes": "20000"})
    good = support.backlog(300, 30)
    database.insert(good[:150])
    database.insert(
        [
            support.Event("order", "order-0", "Huge", b'{"x": "' + b"a" * 2_000_000 + b'"}', seq=1000),
            support.Event("order", "order-1", "Broken", b"{not json", seq=1000),
            support.Event("blob", "blob-1", "Big", b'{"x": "' + b"b" * 50_000 + b'"}', seq=1),
            support.Event("blob", "blob-1", "Small", b'{"x": 1}', seq=2),
        ]
    )
    database.insert(good[150:])
    database.insert([support.Event("order", "order-late", "Later", b'{"late": true}', seq=1)])

    summary = invoke(timeout=60)

    assert summary["ok"], summary
    assert summary["dead_lettered"] == 3
    counts = database.status_counts()
    assert counts == {"PUBLISHED": 302, "DEAD": 3}, counts
    dead = {r["aggregate_id"]: r for r in database.rows() if r["status"] == "DEAD"}
    assert set(dead) == {"order-0", "order-1", "blob-1"}
    assert "over the 1048576-byte limit" in dead["order-0"]["last_error"]
    assert "not valid JSON" in dead["order-1"]["last_error"]
    assert "MessageSizeTooLarge" in dead["blob-1"]["last_error"]

    letters = {m["aggregate_id"]: m for m in dlq.messages()}
    assert set(letters) == {"order-0", "order-1", "blob-1"}
    for aggregate_id, letter in letters.items():
        assert letter["event_id"] == dead[aggregate_id]["event_id"]
        assert letter["reason"] == dead[aggregate_id]["last_error"]
        assert letter["outbox_id"] == dead[aggregate_id]["id"]
    assert letters["order-1"]["payload"] == "{not json"
    assert letters["blob-1"]["payload_bytes"] == 50_009 and "payload" in letters["blob-1"]
    assert "payload" not in letters["order-0"] and letters["order-0"]["payload_omitted"]

    delivered = support.Delivered(topics.read("order", "blob"))
    published_ids = {r[0] for r in database.query("SELECT event_id FROM outbox WHERE status = 'PUBLISHED'")}
    assert set(delivered.copies()) == published_ids, "all the others arrived, nothing dead did"
    assert delivered.order_violations() == 0
    late = [r for r in delivered.records if r.key == b"order-late"]
    assert len(late) == 1, "a later event of another aggregate is not blocked"
    blob = [json.loads(r.value or b"") for r in delivered.records if r.key == b"blob-1"]
    assert blob == [{"x": 1}], "the poison's successor follows it once it is DEAD (skip policy)"
