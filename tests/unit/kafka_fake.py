"""A scripted kafka-python producer with its fatal-state semantics (kafka/producer/sender.py,
transaction_manager.py, record_accumulator.py), on a fake clock.

``flush(timeout)`` answers the pending records in send order: a record whose topic the broker
denies for writing, or that is over the broker's size limit, fails with that error and makes the
producer fatal: every other pending record, and every record sent later, fails with the same
exception object (``abort_batches``).  Records scripted to ``expire`` fail with
``KafkaTimeoutError`` (retriable, no state change).  Like kafka-python, ``flush`` waits up to
``timeout`` per incomplete batch (each record is its own batch here) for records scripted to
take ``ack_delay`` seconds.  A record scripted ``on_wire`` is still unanswered when the fatal
state aborts it: the broker appends it ``wire_seconds`` later, and until then it counts in the
sender's ``_client.in_flight_request_count()`` (a force-closed producer does not stop it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka import errors as kafka_errors


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class Future:
    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None

    def done(self, exc: BaseException | None = None) -> None:
        self.is_done, self.exception = True, exc


@dataclass
class Broker:
    clock: FakeClock
    denied: set[str] = field(default_factory=set)
    max_bytes: int | None = None
    expire: set[bytes] = field(default_factory=set)  # values whose batch expires
    invalid: set[bytes] = field(default_factory=set)  # values the broker finds invalid
    ack_delay: float = 0.0
    stagger: float = 0.0  # each pending record's ack comes this much after the one before
    # The sender thread answers what was sent before while later records are being sent, so a
    # dead producer's next future is already failed when send() returns (as a failed metadata
    # lookup's is).
    eager: bool = False
    on_wire: set[bytes] = field(default_factory=set)  # values still on the wire at an abort
    wire_seconds: float = 0.5
    log: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (topic, key, value)
    landing: list[tuple[float, int, tuple[str, bytes, bytes]]] = field(default_factory=list)
    produced: list[bytes] = field(default_factory=list)  # values that reached the broker
    producers: list[FatalStateProducer] = field(default_factory=list)

    def factory(self, **config: Any) -> FatalStateProducer:
        self.producers.append(FatalStateProducer(self, config))
        return self.producers[-1]

    def values(self) -> list[bytes]:
        self.land()
        return [v for _, _, v in self.log]

    def land(self) -> None:
        """Append what was on the wire and whose time has come, in time order."""
        due = sorted(entry for entry in self.landing if entry[0] <= self.clock.now)
        self.landing = [entry for entry in self.landing if entry[0] > self.clock.now]
        self.log.extend(record for _, _, record in due)


class Client:
    def __init__(self, broker: Broker, producer: int) -> None:
        self.broker, self.producer = broker, producer

    def in_flight_request_count(self) -> int:
        self.broker.land()
        return sum(1 for _, producer, _ in self.broker.landing if producer == self.producer)


class Sender:
    def __init__(self, client: Client | None = None) -> None:
        self.hang = False
        self.forced = False
        self.joined = False
        self.alive = True
        self._client = client

    def force_close(self) -> None:
        self.forced = True

    def join(self, timeout: float | None = None) -> None:
        self.joined = True
        if not self.hang:
            self.alive = False

    def is_alive(self) -> bool:
        return self.alive


class Metadata:
    _last_successful_refresh_ms = 0.0


class FatalStateProducer:
    def __init__(self, broker: Broker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.config = dict(config)
        self.pending: list[tuple[Future, str, bytes, bytes, float]] = []
        self.fatal: BaseException | None = None
        self.closed = False
        self.number = len(broker.producers)  # its place in broker.producers
        self._sender = Sender(Client(broker, self.number))
        self._metadata = Metadata()
        self.block_ms_seen: list[tuple[int, float]] = []  # (max_block_ms, seconds left on send)

    def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Future:
        self.block_ms_seen.append((self.config["max_block_ms"], self.broker.clock.now))
        future = Future()
        delay = self.broker.ack_delay + self.broker.stagger * len(self.pending)
        if self.broker.eager:
            self.flush()
            if self.fatal is not None:
                future.done(self.fatal)
                return future
        self.pending.append((future, topic, key, value, self.broker.clock.now + delay))
        return future

    def flush(self, timeout: float | None = None) -> None:
        clock = self.broker.clock
        self.broker.land()
        on_wire = []
        for future, topic, key, value, ack_at in self.pending:
            if future.is_done:
                continue
            if value in self.broker.on_wire and self.fatal is None:
                on_wire.append((future, topic, key, value))  # answered after what follows
                continue
            if self.fatal is not None:
                future.done(self.fatal)  # aborted with the culprit's exception
                continue
            if timeout is not None and ack_at > clock.now + timeout:
                clock.now += timeout
                raise kafka_errors.KafkaTimeoutError("Timeout waiting for future")
            clock.now = max(clock.now, ack_at)
            self.broker.produced.append(value)
            if value in self.broker.expire:
                future.done(kafka_errors.KafkaTimeoutError("Expiring 1 record(s)"))
            elif value in self.broker.invalid:
                self.fatal = kafka_errors.InvalidRecordError("invalid")
                future.done(self.fatal)
            elif topic in self.broker.denied:
                self.fatal = kafka_errors.TopicAuthorizationFailedError(topic)
                future.done(self.fatal)
            elif self.broker.max_bytes is not None and len(value) > self.broker.max_bytes:
                self.fatal = kafka_errors.MessageSizeTooLargeError("too large")
                future.done(self.fatal)
            else:
                self.broker.log.append((topic, key, value))
                future.done()
        for future, topic, key, value in on_wire:
            if self.fatal is None:
                self.broker.log.append((topic, key, value))
                future.done()
            else:  # aborted, but the broker has the request: appended later all the same
                future.done(self.fatal)
                at = clock.now + self.broker.wire_seconds
                self.broker.landing.append((at, self.number, (topic, key, value)))
        self.pending = [p for p in self.pending if not p[0].is_done]

    def close(self, timeout: float | None = None) -> None:
        self.closed = True
