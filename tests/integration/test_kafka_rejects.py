"""What the real broker rejects costs only the culprit's rows (produce_errors, isolation): a topic
denied for WriteData but not DescribeTopic (Kafka ACLs on the local stack's authorizer broker),
and a record over the topic's ``max.message.bytes``; and waiting for acks stays within the
deadline however the broker staggers its answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    KafkaAdminClient,
    ResourcePattern,
    ResourceType,
)
from kafka.producer.record_accumulator import IncompleteProducerBatches

from outbox_relay import produce_errors
from outbox_relay.config import load_config
from outbox_relay.kafka_tools import ensure_topics, read_topics
from outbox_relay.model import Delivery, Message
from outbox_relay.publisher_kafka import KafkaPublisher
from tests import support
from tests.conftest import make_topics

ACL_KAFKA = "127.0.0.1:9096"  # scripts/local-stack up kafka-acl


@pytest.fixture
def acl_broker(local_stack: None) -> Iterator[str]:
    support.stack("up", "kafka-acl")
    yield ACL_KAFKA


def deny_write(topic: str) -> None:
    """Describe (and everything else) allowed, WriteData denied, for the PLAINTEXT principal."""
    admin = KafkaAdminClient(bootstrap_servers=[ACL_KAFKA], client_id="acl-test")
    try:
        pattern = ResourcePattern(ResourceType.TOPIC, topic)
        result = admin.create_acls(
            [
                ACL("User:ANONYMOUS", "*", ACLOperation.ALL, ACLPermissionType.ALLOW, pattern),
                ACL("User:ANONYMOUS", "*", ACLOperation.WRITE, ACLPermissionType.DENY, pattern),
            ]
        )
        assert not result["failed"], result
    finally:
        admin.close()


def test_a_write_denied_topic_costs_only_its_rows_in_this_run_and_the_next(
    acl_broker: str, database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    names = [topics.name(t) for t in ("open", "denied")]
    ensure_topics([acl_broker], names)
    deny_write(topics.name("denied"))
    time.sleep(1.0)  # the ACL reaches the broker's authorizer through the metadata log
    env = {"KAFKA_BOOTSTRAP_SERVERS": acl_broker, "KAFKA_REQUEST_TIMEOUT_MS": "2000"}
    events = [
        support.Event("denied" if n % 5 == 2 else "open", f"agg-{n % 7}", "e", b"{}", seq=n)
        for n in range(60)
    ]
    database.insert(events)

    first = invoke(**env)
    rows = database.rows()
    by_type = dict(database.query("SELECT id, aggregate_type FROM outbox"))
    denied = [r for r in rows if by_type[r["id"]] == "denied"]
    opened = [r for r in rows if by_type[r["id"]] == "open"]
    assert all(r["status"] == "PUBLISHED" for r in opened), first
    assert all(r["status"] == "PENDING" and r["attempts"] == 0 for r in denied), "never charged"
    heads = {r["aggregate_id"] for r in denied}  # each denied aggregate's head waits; the rest behind it
    assert first["topic_unavailable"] == len(heads) and first["published"] == len(opened), first

    # The warm process's next run: other topics go on (the producer was replaced), the denied
    # one is not tried again within its memory.  Records the fatal state aborted in flight may
    # still be appended, so the first run fenced its shards for the grace (at least Kafka's
    # request timeout): the next run comes once that is over.
    ((fenced,),) = database.query(
        "SELECT GREATEST(MAX(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until)), 0) / 1e6"
        " FROM outbox_shard"
    )
    assert 0 < float(fenced) <= 2.5, f"in doubt after the fatal state: fenced for {float(fenced):.1f} s"
    time.sleep(float(fenced) + 0.2)
    database.insert([support.Event("open", f"agg-{n}", "e", b"{}", seq=100 + n) for n in range(10)])
    second = invoke(**env)
    assert second["published"] == 10 and second["ok"], second
    delivered = support.Delivered(read_topics([acl_broker], [topics.name("open")]))
    assert len(delivered.copies()) == len(opened) + 10
    assert delivered.order_violations() == 0


def test_a_record_over_the_topics_limit_is_dead_lettered_alone_and_the_rest_delivered_in_order(
    database: support.Database,
    topics: support.Topics,
    dlq: support.Queue,
    invoke: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_topics(topics, "order", **{"max.message.bytes": "4000"})
    events = support.backlog(300, 20, size=200)
    big = events[200]
    events[200] = support.Event(
        big.aggregate_type, big.aggregate_id, "e", b'{"pad": "' + b"x" * 9000 + b'"}', big.seq
    )
    database.insert(events)
    # The dead producer is stopped once kafka-python's own count of requests on the wire is 0
    # (read through its real attributes: no fallback that would skip the wait).
    waits: list[tuple[bool, int]] = []
    await_answers = produce_errors.await_answers

    def counted(producer: Any, clock: Any, deadline: float) -> bool:
        in_flight = producer._sender._client.in_flight_request_count
        quiet = await_answers(producer, clock, deadline)
        waits.append((quiet, in_flight()))
        return quiet

    monkeypatch.setattr(produce_errors, "await_answers", counted)

    summary = invoke()
    assert waits and all(quiet and left == 0 for quiet, left in waits), waits
    assert summary["dead_lettered"] == 1 and summary["published"] == 299, summary
    (letter,) = dlq.messages()
    assert "MessageSizeTooLarge" in letter["reason"] or "RecordTooLarge" in letter["reason"], letter
    statuses = database.status_counts()
    assert statuses == {"PUBLISHED": 299, "DEAD": 1}
    delivered = support.Delivered(topics.read("order"))
    copies = delivered.copies()
    assert len(copies) == 299 and delivered.order_violations() == 0
    # Bounded re-sends: the aborted records are sent again once, not once per pass.
    assert sum(copies.values()) <= 2 * 299 and max(copies.values()) <= 2, sum(copies.values())


class _Spaced:
    """A real producer whose sends are spaced out, so each record goes in a request of its own."""

    def __init__(self, **config: Any) -> None:
        self._inner = KafkaProducer(**config)

    def send(self, *args: Any, **kwargs: Any) -> Any:
        future = self._inner.send(*args, **kwargs)
        time.sleep(0.1)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_waiting_for_acks_ends_by_the_deadline_when_the_broker_answers_one_request_at_a_time(
    topics: support.Topics, slow_broker: support.DelayProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the delaying proxy the first answer comes after 0.9 s, the next ones after 1.8 s:
    kafka-python's flush(1.0) waits up to 1.0 s per batch in turn, 1.8 s in all when it waits for
    the first batch first.  (It takes its batches from a set; they are put in creation order here,
    so that it does, every time.)"""
    everything = IncompleteProducerBatches.all
    monkeypatch.setattr(
        IncompleteProducerBatches, "all", lambda self: sorted(everything(self), key=lambda b: b.created)
    )
    make_topics(topics, "a", "b", "c")
    env = {
        "OUTBOX_DB_HOST": "db.local",
        "OUTBOX_DB_NAME": "x",
        "OUTBOX_DB_USER": "x",
        "OUTBOX_DB_PASSWORD": "x",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{support.SLOW_KAFKA_PROXY_PORT}",
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "DLQ_QUEUE_URL": "http://127.0.0.1:5000/1/q",
        "KAFKA_LINGER_MS": "0",
    }
    pub = KafkaPublisher(load_config(env).kafka, factory=_Spaced)
    warm = [Message(n, topics.name(t), b"k", b"{}", []) for n, t in enumerate("abc")]
    deadline = time.monotonic() + 20
    assert all(r.delivery is Delivery.DELIVERED for r in pub.send(warm, deadline).wait(deadline))

    slow_broker.delay = 0.9
    batch = [Message(10 + n, topics.name(t), b"k", b"{}", []) for n, t in enumerate("abc")]
    deadline = time.monotonic() + 1.3  # the sends take 0.3 s: 1.0 s left to wait
    in_flight = pub.send(batch, deadline)
    results = in_flight.wait(deadline)
    late = time.monotonic() - deadline
    slow_broker.delay = 0.0
    assert late < 0.1, f"waited {late:.2f} s past the deadline"
    assert any(r.delivery is Delivery.UNAVAILABLE for r in results) and pub.in_doubt, results
    pub.close()
