"""The publisher against kafka-python's fatal state (tests/unit/kafka_fake.py): a write-denied topic
or a record over the broker's limit is found by bisection whatever its position, costs only its
own rows, is not sent again, and the producer is replaced; first copies stay in order; what may
still land sets in_doubt; every wait is bounded by the deadline on the injected clock."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay.config import load_config
from outbox_relay.model import Delivery, Message, SendResult
from outbox_relay.publisher_kafka import KafkaPublisher
from tests.unit.kafka_fake import Broker, FakeClock
from tests.unit.test_publisher_topics import ENV


def publisher(broker: Broker, **env: str) -> KafkaPublisher:
    return KafkaPublisher(load_config({**ENV, **env}).kafka, factory=broker.factory, clock=broker.clock)


def message(n: int, topic: str = "t", key: str | None = None, size: int = 10) -> Message:
    value = f"{n}:".encode().ljust(size, b".")
    return Message(n, topic, (key or f"k{n}").encode(), value, [])


def publish(pub: KafkaPublisher, messages: list[Message], seconds: float = 30.0) -> list[Delivery]:
    deadline = pub.clock.monotonic() + seconds
    return [r.delivery for r in pub.send(messages, deadline).wait(deadline)]


@pytest.mark.parametrize("eager", [False, True])
def test_a_write_denied_topic_costs_only_its_rows_and_the_producer_is_replaced(eager: bool) -> None:
    broker = Broker(FakeClock(), denied={"denied"}, eager=eager)
    pub = publisher(broker)
    topics = ["a", "b", "a", "denied", "b", "a", "denied", "b", "a", "b"]
    batch = [message(n, topic) for n, topic in enumerate(topics)]
    results = publish(pub, batch)
    assert results == [Delivery.TOPIC_UNAVAILABLE if t == "denied" else Delivery.DELIVERED for t in topics], (
        "the bystanders on other topics are delivered; only the denied topic's rows wait"
    )
    assert sorted(broker.values()) == sorted(m.value for m in batch if m.topic != "denied")
    assert broker.producers[0]._sender.forced and broker.producers[0]._sender.joined
    assert pub.in_doubt, "records aborted in flight may still be appended"
    # The next pass of the warm process: a live producer, and the denied topic is not tried.
    made, produced = len(broker.producers), len(broker.produced)
    assert publish(pub, [message(20, "a"), message(21, "denied"), message(22, "b")]) == [
        Delivery.DELIVERED,
        Delivery.TOPIC_UNAVAILABLE,
        Delivery.DELIVERED,
    ]
    assert len(broker.producers) == made and len(broker.produced) == produced + 2
    assert not pub.in_doubt


def test_a_record_over_the_broker_limit_is_found_wherever_it_is_and_not_sent_again() -> None:
    broker = Broker(FakeClock(), max_bytes=100)
    pub = publisher(broker)
    batch = [message(n, key=f"k{n % 7}", size=500 if n == 150 else 10) for n in range(200)]
    results = publish(pub, batch)
    assert results[150] is Delivery.REJECTED
    culprit_key = batch[150].key
    for n, result in enumerate(results):
        if n != 150:
            expected = Delivery.NOT_SENT if batch[n].key == culprit_key and n > 150 else Delivery.DELIVERED
            assert result is expected, (n, result)
    assert len(broker.produced) <= 200 + 2 * 200, "bounded re-sends"
    # Waiting for the dead-letter queue, it comes again: it is not sent, nothing is aborted.
    produced, made = len(broker.produced), len(broker.producers)
    again = publish(pub, [batch[150], *[b for b in batch[151:] if b.key == culprit_key]])
    assert again[0] is Delivery.REJECTED and batch[150].value not in broker.produced[produced:]
    assert len(broker.producers) == made, "no producer lost to it a second time"


def test_an_invalid_record_is_found_by_bisection_wherever_it_is() -> None:
    for position in (0, 37, 150, 199):
        broker = Broker(FakeClock())
        pub = publisher(broker)
        batch = [message(n) for n in range(200)]
        broker.invalid = {batch[position].value}
        results = publish(pub, batch)
        assert results == [Delivery.REJECTED if n == position else Delivery.DELIVERED for n in range(200)]
        assert len(broker.producers) - 1 <= 2 * math.ceil(math.log2(200)), "group sends"
        assert broker.produced.count(batch[position].value) <= math.ceil(math.log2(200)) + 1


def test_isolation_never_resends_a_record_after_an_earlier_one_of_its_key_failed() -> None:
    """A1 expires (retriable), C's topic is denied (fatal), A2 is aborted: A2 must not be
    re-sent in isolation, or its first copy would land before A1's."""
    broker = Broker(FakeClock(), denied={"denied"}, expire={b"1:........"})
    pub = publisher(broker)
    batch = [message(1, "t", "A"), message(2, "denied", "C"), message(3, "t", "A"), message(4, "t", "B")]
    results = publish(pub, batch)
    expected = [Delivery.UNAVAILABLE, Delivery.TOPIC_UNAVAILABLE, Delivery.NOT_SENT, Delivery.DELIVERED]
    assert results == expected
    assert batch[2].value not in broker.values()


# --- the family: any topics, keys, sizes and positions ---------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "denied"]), st.integers(0, 5), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    big=st.lists(st.integers(0, 59), max_size=3),
)
def test_culprits_cost_only_themselves_and_first_copies_stay_in_order(
    rows: list[tuple[str, int, bool]], big: list[int]
) -> None:
    broker = Broker(FakeClock(), denied={"denied"}, max_bytes=100)
    pub = publisher(broker)
    batch = [
        message(n, topic, f"{topic}{key}", 500 if n in big else 10) for n, (topic, key, _) in enumerate(rows)
    ]
    pending = list(batch)
    sent_per_record: dict[bytes, int] = defaultdict(int)
    for _ in range(len(batch) + 1):  # passes, as the relay makes them (id order per key)
        if not pending:
            break
        before = len(broker.produced)
        made = len(broker.producers)
        results = publish(pub, pending)
        for value in broker.produced[before:]:
            sent_per_record[value] += 1
        culprits = sum(1 for m in pending if m.topic == "denied" or len(m.value) > 100)
        group_sends = len(broker.producers) - made
        assert group_sends <= 1 + culprits * (2 * math.ceil(math.log2(len(pending) + 1)) + 2)
        stopped: set[bytes] = set()
        left = []
        for m, result in zip(pending, results, strict=True):
            if m.key in stopped:
                assert result is not Delivery.DELIVERED or m.value in broker.values()
                left.append(m)
                continue
            if m.topic == "denied":
                assert result is Delivery.TOPIC_UNAVAILABLE
            elif len(m.value) > 100:
                assert result is Delivery.REJECTED
            else:
                assert result in (Delivery.DELIVERED, Delivery.NOT_SENT), (m, result)
            if result is not Delivery.DELIVERED:
                stopped.add(m.key)
            if result is Delivery.NOT_SENT:
                left.append(m)
        pending = left
    assert not [
        m
        for m in pending
        if m.topic != "denied"
        and len(m.value) <= 100
        and m.key not in {p.key for p in pending if p.topic == "denied" or len(p.value) > 100}
    ], "every good record of a key without a culprit is delivered"
    # First copies per key in order; a culprit reached the broker a bounded number of times.
    first: dict[bytes, int] = {}
    for _, _, value in broker.log:
        first.setdefault(value, len(first))
    by_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for m in batch:
        if m.value in first:
            by_key[(m.topic, m.key)].append(first[m.value])
    assert all(seq == sorted(seq) for seq in by_key.values()), by_key
    for m in batch:
        if len(m.value) > 100 and m.topic != "denied":
            assert sent_per_record[m.value] <= 2 * math.ceil(math.log2(len(batch) + 1)) + 2


# --- in doubt, and stopping a producer ---------------------------------------------------------


def test_a_batch_that_expired_in_flight_leaves_the_run_in_doubt() -> None:
    broker = Broker(FakeClock(), expire={b"1:........"})
    pub = publisher(broker)
    assert publish(pub, [message(1), message(2)]) == [Delivery.UNAVAILABLE, Delivery.DELIVERED]
    assert pub.in_doubt, "an expired batch may have been appended"


def test_a_sender_thread_that_will_not_stop_is_finished_before_anything_is_sent_again() -> None:
    broker = Broker(FakeClock(), expire={b"1:........"})
    pub = publisher(broker)
    first = broker.factory  # the first producer's sender hangs when stopped

    def factory(**config: Any) -> Any:
        producer = first(**config)
        producer._sender.hang = len(broker.producers) == 1
        return producer

    pub._factory = factory
    publish(pub, [message(1)])  # UNAVAILABLE: the producer is dropped; its thread does not stop
    assert broker.producers[0]._sender.alive and pub.in_doubt
    pub.new_run()
    results = publish(pub, [message(2)])
    assert results == [Delivery.UNAVAILABLE] and len(broker.producers) == 1, "nothing sent meanwhile"
    assert pub.in_doubt
    broker.producers[0]._sender.hang = False
    assert publish(pub, [message(3)]) == [Delivery.DELIVERED]
    assert not broker.producers[0]._sender.alive and not pub.in_doubt


# --- deadlines on the injected clock -----------------------------------------------------------


def test_waiting_for_acks_is_bounded_by_the_deadline_not_per_batch() -> None:
    """kafka-python's flush(timeout) waits up to timeout for each batch: three batches acked at
    0.9 s, 1.8 s and 2.7 s would keep flush(1.0) busy for 2.7 s."""
    clock = FakeClock()
    broker = Broker(clock, ack_delay=0.9, stagger=0.9)
    pub = publisher(broker)
    deadline = clock.now + 1.0
    results = pub.send([message(1), message(2), message(3)], deadline).wait(deadline)
    assert clock.now <= deadline, f"waited {clock.now - deadline + 1.0:.2f} s of a 1 s deadline"
    assert results[0] == SendResult(Delivery.DELIVERED)
    assert [r.delivery for r in results[1:]] == [Delivery.UNAVAILABLE] * 2 and pub.in_doubt


def test_isolation_sends_block_for_metadata_no_longer_than_the_time_left() -> None:
    clock = FakeClock()
    broker = Broker(clock, denied={"denied"}, ack_delay=0.05)
    pub = publisher(broker, KAFKA_MAX_BLOCK_MS="5000")
    deadline = clock.now + 2.0
    batch = [message(n, "denied" if n == 5 else "t") for n in range(12)]
    pub.send(batch, deadline).wait(deadline)
    assert len(broker.producers) > 1, "isolation ran"
    for producer in broker.producers:
        for block_ms, at in producer.block_ms_seen:
            assert block_ms <= max(1, (deadline - at) * 1000 + 1), (block_ms, deadline - at)
    assert clock.now <= deadline


def test_later_records_of_an_aggregate_whose_record_failed_before_sending_are_not_sent() -> None:
    """Found by the simulation (tests/sim): an aggregate's head waits for its missing topic (known,
    so it fails before it is sent) while a later event of the aggregate names a topic of its own;
    sending that one anyway (it cannot be marked published) put a copy of an older event after a
    newer one's in Kafka, run after run.  The aggregate is the (aggregate_type, key) pair."""
    broker = Broker(FakeClock())
    pub = publisher(broker)

    def event(n: int, topic: str, key: str, aggregate_type: str) -> Message:
        return Message(n, topic, key.encode(), b"{}", [("aggregate_type", aggregate_type.encode())])

    pub._topic_unavailable("missing", "topic 'missing' does not exist")  # remembered down
    batch = [
        event(1, "missing", "A", "order"),
        event(2, "own.topic", "A", "order"),  # same aggregate, its own topic
        event(3, "own.topic", "A", "user"),  # another aggregate with the same key
    ]
    assert publish(pub, batch) == [Delivery.TOPIC_UNAVAILABLE, Delivery.NOT_SENT, Delivery.DELIVERED]
    assert [v for _, _, v in broker.log] == [b"{}"] and len(broker.log) == 1


def last_copies_in_order(broker: Broker, key: bytes) -> list[bytes]:
    """The key's values in the order of their last copies in the log."""
    values = [v for _, k, v in broker.log if k == key]
    return [v for i, v in enumerate(values) if v not in values[i + 1 :]]


@pytest.mark.parametrize("wire_seconds", [0.01, 0.5, 3.0])
def test_a_dead_producer_is_stopped_only_once_its_requests_are_answered(wire_seconds: float) -> None:
    """Found by the simulation: a fatal state aborts a record whose request the broker still
    holds; re-sending the key's records on a new producer before that request is answered lets
    it be appended after the re-sends, so the older event's copy is the last one."""
    clock = FakeClock()
    a1, a2 = message(1, key="A"), message(2, key="A")
    broker = Broker(clock, invalid={message(3).value}, on_wire={a1.value}, wire_seconds=wire_seconds)
    pub = publisher(broker)
    started = clock.now
    results = publish(pub, [a1, message(3), a2], seconds=10.0)
    assert results == [Delivery.DELIVERED, Delivery.REJECTED, Delivery.DELIVERED]
    clock.now += 60
    assert last_copies_in_order(broker, b"A") == [a1.value, a2.value], "event 1's last copy is last"
    assert clock.now - 60 - started >= wire_seconds, "isolation waited for the wire"
    assert broker.producers[0]._sender.forced, "stopped once answered"


def test_a_dead_producer_whose_requests_outlive_the_deadline_sends_nothing_more() -> None:
    clock = FakeClock()
    a1, a2 = message(1, key="A"), message(2, key="A")
    broker = Broker(clock, invalid={message(3).value}, on_wire={a1.value}, wire_seconds=5.0)
    pub = publisher(broker)
    deadline = clock.now + 1.0
    results = [r.delivery for r in pub.send([a1, message(3), a2], deadline).wait(deadline)]
    assert results == [Delivery.UNAVAILABLE] * 3, "nothing is isolated: the run stops"
    assert pub.in_doubt and clock.now <= deadline
    assert len(broker.producers) == 1, "no re-send on a new producer"
    clock.now += 60
    assert broker.values() == [a1.value], "the request on the wire landed; nothing else was sent"
