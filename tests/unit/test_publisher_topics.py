"""The publisher's topic rules, with a scripted kafka-python producer: a missing or denied topic is
a per-topic outage (never charged, never a fatal producer state, remembered so it costs one
metadata wait), and a metadata wait cut short by the deadline is not a Kafka outage."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from kafka import errors as kafka_errors

from outbox_relay import kafka_memory
from outbox_relay.config import load_config
from outbox_relay.model import Delivery, Message
from outbox_relay.publisher_kafka import KafkaPublisher

ENV = {
    "OUTBOX_DB_HOST": "db.local",
    "OUTBOX_DB_NAME": "shop",
    "OUTBOX_DB_USER": "relay",
    "OUTBOX_DB_PASSWORD": "pw",
    "KAFKA_BOOTSTRAP_SERVERS": "b-1:9092",
    "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    "DLQ_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/dlq",
}


class Future:
    def __init__(self, exception: BaseException | None = None) -> None:
        self.is_done = True
        self.exception = exception


class Producer:
    """Answers per topic: ``denied`` topics fail their future with TopicAuthorizationFailed (as
    kafka-python 3's send() does with a metadata error); ``silent`` topics block in send() until
    max_block_ms and raise KafkaTimeoutError with no metadata answer."""

    made = 0

    def __init__(self, denied: set[str], silent: set[str], **config: Any) -> None:
        Producer.made += 1
        self.config = dict(config)
        self.denied, self.silent = denied, silent
        self.sent: list[str] = []

    def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Future:
        self.sent.append(topic)
        if topic in self.silent:
            time.sleep(self.config["max_block_ms"] / 1000)
            raise kafka_errors.KafkaTimeoutError("Failed to update metadata")
        if topic in self.denied:
            return Future(kafka_errors.TopicAuthorizationFailedError(topic))
        return Future()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def publisher(
    denied: frozenset[str] = frozenset(), silent: frozenset[str] = frozenset(), **env: str
) -> tuple[KafkaPublisher, list[Producer]]:
    made: list[Producer] = []

    def factory(**config: Any) -> Producer:
        producer = Producer(set(denied), set(silent), **config)
        made.append(producer)
        return producer

    return KafkaPublisher(load_config({**ENV, **env}).kafka, factory=factory), made


def msg(n: int, topic: str) -> Message:
    return Message(n, topic, f"k{n}".encode(), b"{}", [])


def test_a_denied_topic_is_a_topic_outage_not_a_fatal_producer_error_and_is_remembered() -> None:
    pub, made = publisher(denied=frozenset({"secret"}))
    pub.new_run()
    batch = [msg(1, "orders"), msg(2, "secret"), msg(3, "orders"), msg(4, "secret")]
    results = pub.send(batch, time.monotonic() + 5).wait(time.monotonic() + 5)
    assert [r.delivery for r in results] == [
        Delivery.DELIVERED,
        Delivery.TOPIC_UNAVAILABLE,
        Delivery.DELIVERED,
        Delivery.TOPIC_UNAVAILABLE,
    ]
    assert len(made) == 1, "no producer rebuilt, no one-by-one isolation"
    # The next pass, and the next run of the warm process, do not ask for it again.
    again = pub.send([msg(5, "secret"), msg(6, "orders")], time.monotonic() + 5).wait(time.monotonic() + 5)
    pub.new_run()
    third = pub.send([msg(7, "secret")], time.monotonic() + 5).wait(time.monotonic() + 5)
    assert [r.delivery for r in again + third] == [
        Delivery.TOPIC_UNAVAILABLE,
        Delivery.DELIVERED,
        Delivery.TOPIC_UNAVAILABLE,
    ]
    assert made[0].sent.count("secret") == 2 and len(made) == 1


def test_a_remembered_topic_is_asked_for_again_after_the_memory_runs_out(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka_memory, "TOPIC_MEMORY_SECONDS", 0.0)
    pub, made = publisher(denied=frozenset({"secret"}))
    pub.send([msg(1, "secret")], time.monotonic() + 5).wait(time.monotonic() + 5)
    pub.new_run()
    pub.send([msg(2, "secret")], time.monotonic() + 5).wait(time.monotonic() + 5)
    assert made[0].sent == ["secret", "secret"]


def test_a_metadata_wait_cut_short_by_the_deadline_leaves_the_rows_untouched_not_an_outage() -> None:
    pub, _ = publisher(silent=frozenset({"slow"}), KAFKA_MAX_BLOCK_MS="5000")
    deadline = time.monotonic() + 0.15  # the deadline cuts the wait to almost nothing
    results = pub.send([msg(1, "orders"), msg(2, "slow"), msg(3, "orders")], deadline).wait(deadline)
    assert [r.delivery for r in results] == [Delivery.DELIVERED, Delivery.NOT_SENT, Delivery.NOT_SENT]


def test_a_full_metadata_wait_with_no_answer_is_a_kafka_outage() -> None:
    pub, _ = publisher(silent=frozenset({"slow"}), KAFKA_MAX_BLOCK_MS="200")
    deadline = time.monotonic() + 5
    results = pub.send([msg(1, "slow"), msg(2, "orders")], deadline).wait(deadline)
    assert [r.delivery for r in results] == [Delivery.UNAVAILABLE, Delivery.UNAVAILABLE]


# --- order after a producer-epoch bump ------------------------------------------------------


class EpochBumpingProducer:
    """The first producer fails ``m1`` with OutOfOrderSequenceNumber but delivers the later
    records (kafka-python bumps the epoch without aborting); later producers deliver everything.
    ``log`` is the partition as a consumer reads it: (key, record id) in the order they landed."""

    def __init__(self, log: list[tuple[bytes, int]], generation: int, **config: Any) -> None:
        self.config = dict(config)
        self.log, self.generation = log, generation

    def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Future:
        record_id = int(value)
        if self.generation == 0 and record_id == 1:
            return Future(kafka_errors.OutOfOrderSequenceNumberError("out of order"))
        self.log.append((key, record_id))
        return Future()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_after_an_epoch_bump_the_later_records_of_the_isolated_key_go_again_after_it() -> None:
    from outbox_relay import ordering
    from outbox_relay.model import OutboxRecord

    log: list[tuple[bytes, int]] = []
    made: list[EpochBumpingProducer] = []

    def factory(**config: Any) -> EpochBumpingProducer:
        made.append(EpochBumpingProducer(log, len(made), **config))
        return made[-1]

    pub = KafkaPublisher(load_config(ENV).kafka, factory=factory)
    rows = {
        n: OutboxRecord(n, str(n), "t", "K" if n < 4 else "J", "e", b"{}", None, None, None, 0, 0, True)
        for n in range(1, 6)
    }
    pending = dict(rows)
    published: set[int] = set()
    for _ in range(3):  # passes
        if not pending:
            break
        batch = sorted(pending.values(), key=lambda r: r.id)
        messages = [Message(r.id, "t", r.aggregate_id.encode(), str(r.id).encode(), []) for r in batch]
        deadline = time.monotonic() + 5
        results = pub.send(messages, deadline).wait(deadline)
        settled = ordering.settle(list(zip(batch, results, strict=True)))
        for record in settled.published:
            published.add(record.id)
            del pending[record.id]
    assert published == set(rows)
    # Each key's last copies, in the order they landed, are in outbox order.
    last = {record_id: position for position, (_, record_id) in enumerate(log)}
    for key in (b"K", b"J"):
        ids = sorted((i for k, i in log if k == key), key=lambda i: last[i])
        ids = list(dict.fromkeys(ids))
        assert ids == sorted(ids), (key, log)
    # Record 1 failed inside send() here: K's later records wait for it (not sent ahead of it).
    assert log.count((b"K", 2)) == 1, "K's record 2 was not sent ahead of record 1"
    first = [i for k, i in log if k == b"K"]
    assert list(dict.fromkeys(first)) == [1, 2, 3], log


def test_a_remembered_topic_is_tried_again_within_the_same_run_once_the_memory_ends(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka_memory, "TOPIC_MEMORY_SECONDS", 0.0)
    pub, made = publisher(denied=frozenset({"secret"}))
    pub.new_run()
    for n in (1, 2):  # two passes of one long (poll-window) run, no new_run() between
        pub.send([msg(n, "secret")], time.monotonic() + 5).wait(time.monotonic() + 5)
    assert made[0].sent == ["secret", "secret"]


class BuggyProducer(Producer):
    def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Future:
        if topic == "boom":
            raise AttributeError("a bug, not content")
        return super().send(topic, value, key, headers)


def test_a_bug_in_send_ends_the_run_in_doubt_and_drops_the_producer() -> None:
    made: list[Producer] = []

    def factory(**config: Any) -> Producer:
        made.append(BuggyProducer(set(), set(), **config))
        return made[-1]

    pub = KafkaPublisher(load_config(ENV).kafka, factory=factory)
    try:
        pub.send([msg(1, "orders"), msg(2, "boom")], time.monotonic() + 5)
    except AttributeError:
        pass
    else:
        raise AssertionError("a bug must not be turned into a row's failure")
    assert pub.in_doubt, "the record handed over before the bug may still land"
    pub.send([msg(3, "orders")], time.monotonic() + 5).wait(time.monotonic() + 5)
    assert len(made) == 2, "the producer was dropped"


class TwiceBumpedProducer(EpochBumpingProducer):
    """Found by the simulation: the first producer's bump fails m1, m2 and m3 in flight; on the
    next one (isolation's group send of m1 and m2) the bump fails m1 again while m2, behind it,
    goes through; m1 alone goes through on the third.  m1's copy lands after m2's."""

    FAILS: ClassVar[dict[int, set[int]]] = {0: {1, 2, 3}, 1: {1}}

    def __init__(self, log: list[tuple[bytes, int]], generation: int, **config: Any) -> None:
        super().__init__(log, generation, **config)
        self.pending: list[tuple[Future, bytes, int]] = []

    def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Future:
        future = Future()
        future.is_done = False  # in flight: answered at flush
        self.pending.append((future, key, int(value)))
        return future

    def flush(self, timeout: float | None = None) -> None:
        bump = kafka_errors.OutOfOrderSequenceNumberError("out of order")
        for future, key, record_id in self.pending:
            if record_id in self.FAILS.get(self.generation, set()):
                future.exception = bump
            else:
                self.log.append((key, record_id))
            future.is_done = True
        self.pending = []


def test_a_record_delivered_before_an_earlier_one_of_its_key_in_isolation_goes_again_after_it() -> None:
    log: list[tuple[bytes, int]] = []
    made: list[TwiceBumpedProducer] = []

    def factory(**config: Any) -> TwiceBumpedProducer:
        made.append(TwiceBumpedProducer(log, len(made), **config))
        return made[-1]

    pub = KafkaPublisher(load_config(ENV).kafka, factory=factory)
    messages = [Message(n, "t", b"K", str(n).encode(), []) for n in (1, 2, 3)]
    deadline = time.monotonic() + 5
    results = [r.delivery for r in pub.send(messages, deadline).wait(deadline)]
    assert log == [(b"K", 2), (b"K", 1), (b"K", 3)], "the scripted interleaving"
    # m2 is not counted delivered: it goes again in the next pass, after m1's copy (and m3 after
    # it, by the contiguous-prefix rule).
    assert results[:2] == [Delivery.DELIVERED, Delivery.NOT_SENT], results
