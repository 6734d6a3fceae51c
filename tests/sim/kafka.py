"""The simulated Kafka cluster and a simulated kafka-python 3.0.12 ``KafkaProducer``.

The producer has the surface the relay's publisher uses (``send``, ``flush``, ``close``,
``config``, ``_metadata``, ``_sender``, futures with ``is_done``/``exception``/``get``) and copies
kafka-python's rules from its source rather than guessing:

* ``send`` waits for the topic's metadata up to ``max_block_ms`` and raises ``KafkaTimeoutError``
  when it does not come (a missing topic: the cluster answers, without it); a topic denied for
  Describe gives a failed future (kafka.py ``send``); a record over ``max_request_size`` raises
  ``MessageSizeTooLargeError`` (``_ensure_valid_record_size``).
* A batch failing with a retriable error is retried until ``delivery_timeout_ms`` (sender.py
  ``_can_retry``); then it fails with no state change.  A batch over the topic's
  ``max.message.bytes`` with more than one record is split and retried (``_can_split``).
* ``OutOfOrderSequenceNumber``/``UnknownProducerId``/``InvalidProducerEpoch`` bump the epoch
  (transaction_manager.py ``_NEEDS_EPOCH_BUMP_ERRORS``): the batch and every batch in flight fail;
  batches not drained yet go on under the new epoch.
* Any other non-retriable error (``TopicAuthorizationFailed`` on produce, a single record too
  large, ``InvalidRecord``...) is FATAL for a non-transactional idempotent producer
  (``classify_batch_error``'s last line): every incomplete batch, in flight or not, and every
  later one, fails with that same exception (sender.py ``run_once`` → ``_maybe_abort_batches``).
* ``flush(timeout)`` waits up to ``timeout`` for EACH incomplete batch in turn
  (record_accumulator.py ``await_flush_completion``).
* ``close(timeout)`` flushes first (raising ``KafkaTimeoutError`` past the timeout, before the sender
  is stopped); ``_sender.force_close()`` aborts the batches not yet answered.

What the broker does with a request on the wire does not depend on the client any more: records
in flight may land after their future failed (a delivery timeout, an abort), and a frozen
process's sender transmits nothing until it thaws, then goes on.
"""

from __future__ import annotations

import typing
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import errors as kafka_errors

from .world import Process, World

PARTITIONS = 3
# A record whose value holds this is refused by the broker's own validation (as a broker with
# schema validation answers INVALID_RECORD): poison the relay cannot see before sending.
REFUSED = b"broker-refuses"
# Refusals that are the record's own fault.
_OWN_FAULT = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
)
# Refusals after which kafka-python resets the producer's epoch (KIP-360).
_EPOCH_RESETS = (
    kafka_errors.OutOfOrderSequenceNumberError,
    kafka_errors.UnknownProducerIdError,
    kafka_errors.InvalidProducerEpochError,
)
BATCH_OVERHEAD = 70  # bytes of a record batch's header, roughly as kafka-python sizes them


@dataclass
class Topic:
    exists: bool = True
    writable: bool = True  # DescribeTopic granted, WriteData denied when False
    max_message_bytes: int = 1_048_588


@dataclass(frozen=True)
class Appended:
    """A record the broker appended to a partition's log."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    producer: int
    at: float
    sent_at: float  # when its request went on the wire

    @property
    def event_id(self) -> str:
        return dict(self.headers)["id"].decode()


@dataclass
class KafkaFaults:
    outages: list[tuple[float, float]] = field(default_factory=list)  # the whole cluster is down
    retriable: float = 0.0  # a produce request answered NotLeaderForPartition
    epoch_bump: float = 0.0  # answered OutOfOrderSequenceNumber
    slow_ack: float = 0.0  # the answer takes seconds
    lost_ack: float = 0.0  # appended, but the answer never comes (the request times out)
    zombie: float = 0.0  # a force-closed sender still transmits what it had drained
    slow_broker: float = 0.0  # a request is appended seconds after it was sent
    # One partition without a leader for a while (a broker restarted by patching, a leader
    # election): (topic, partition, from, to); its requests are answered NotLeaderForPartition.
    partition_outages: list[tuple[str, int, float, float]] = field(default_factory=list)


class Cluster:
    def __init__(self, world: World) -> None:
        self.world = world
        self.topics: dict[str, Topic] = {}
        self.logs: dict[tuple[str, int], list[Appended]] = {}
        self.faults = KafkaFaults()
        self.quiet = False
        self.producers = 0
        self.event_ids: set[str] = set()  # every event id appended, for the checks
        # (producer, event id) of records an epoch bump failed in flight: kafka-python then sends
        # the batches behind them under the new epoch, so a later record may land first.
        self.bumped: dict[tuple[int, str], float] = {}  # -> when
        # Each producer's process, and when it was force-closed (its connection dropped).
        self.process_of: dict[int, str] = {}
        self.closed_at: dict[int, float] = {}
        self.run_of: dict[int, tuple[str, int]] = {}  # producer -> (process, invocation)
        # (process, event id) of a record the broker refused for its own content (too large,
        # invalid), putting the producer in its fatal state -> (when, invocation of the process).
        self.culprit_fatals: dict[tuple[str, str], list[tuple[float, int]]] = {}
        # (process, invocation) in which Kafka itself failed a request of the process (an outage,
        # a timeout, a leader moving, an epoch reset): isolation may stop there, by design.
        self.faulted_runs: set[tuple[str, int]] = set()
        # The idempotence check: the next sequence number the broker expects per
        # (producer, epoch, topic, partition).
        self.expected: dict[tuple[int, int, str, int], int] = {}

    def fault(self, process: Process) -> None:
        """Kafka itself failed a request of ``process`` in its current invocation."""
        self.faulted_runs.add((process.name, process.runs))

    def up(self) -> bool:
        now = self.world.now
        return self.quiet or not any(a <= now < b for a, b in self.faults.outages)

    def noisy(self, rate: float) -> bool:
        return not self.quiet and rate > 0 and self.world.rng.random() < rate

    def append(self, batch: _Batch, producer: int) -> None:
        log = self.logs.setdefault((batch.topic, batch.partition), [])
        for record in batch.records:
            appended = Appended(
                batch.topic, record.key, record.value, record.headers, producer, self.world.now, batch.sent_at
            )
            log.append(appended)
            self.event_ids.add(appended.event_id)

    def records(self) -> list[Appended]:
        return [a for log in self.logs.values() for a in log]


class SimFuture:
    """``FutureRecordMetadata``'s surface: ``is_done``, ``value``, ``exception``, ``get``."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.is_done = False
        self.value: Any = None
        self.exception: BaseException | None = None
        self._waiters: list[Any] = []

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def _resolve(self, exception: BaseException | None) -> None:
        if self.is_done:
            return
        self.is_done, self.exception = True, exception
        self.value = None if exception else object()
        for actor in self._waiters:
            self.world.wake(actor)
        self._waiters.clear()

    def wait(self, timeout: float | None) -> bool:
        if not self.is_done:
            self._waiters.append(self.world.block())
            self.world.wait(3600.0 if timeout is None else max(0.0, timeout))
        return self.is_done

    def get(self, timeout: float | None = None) -> Any:
        if not self.wait(timeout):
            raise kafka_errors.KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if self.exception is not None:
            raise self.exception
        return self.value


@dataclass(eq=False)
class _Record:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    future: SimFuture

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers) + 20

    @property
    def headers_id(self) -> str:
        return dict(self.headers).get("id", b"").decode(errors="replace")


@dataclass(eq=False)
class _Batch:
    topic: str
    partition: int
    records: list[_Record]
    created: float
    epoch: int
    state: str = "queued"  # queued → inflight → done
    attempts: int = 0
    done: SimFuture | None = None
    seq: int | None = None  # its sequence number in (partition, epoch), given when first drained
    sent_at: float = 0.0

    @property
    def size(self) -> int:
        return BATCH_OVERHEAD + sum(r.size for r in self.records)


class _Metadata:
    def __init__(self) -> None:
        self._last_successful_refresh_ms = 0.0


class _Client:
    """The network client's count of requests written and not answered (nor timed out) yet."""

    def __init__(self) -> None:
        self.on_wire = 0

    def in_flight_request_count(self, node_id: int | None = None) -> int:
        return self.on_wire


class _Sender:
    """The I/O thread's handle: ``force_close``, ``join``, ``is_alive``, ``_client``."""

    def __init__(self, producer: SimProducer) -> None:
        self.producer = producer
        self.alive = True
        self._client = _Client()

    def force_close(self) -> None:
        self.producer._force_close()

    def initiate_close(self) -> None:
        self.producer._closing = True

    def is_alive(self) -> bool:
        return self.alive or self.producer._zombie is not None

    def join(self, timeout: float | None = None) -> None:
        """Returns once the thread has ended (its last iteration done) or ``timeout`` passed."""
        producer = self.producer
        end = producer.world.now + (3600.0 if timeout is None else timeout)
        while self.is_alive() and producer.world.now < end:
            producer.world.pause(min(0.01, end - producer.world.now))


class SimProducer:
    """One kafka-python producer of one process (``factory(**config)``)."""

    def __init__(self, cluster: Cluster, process: Process, **config: Any) -> None:
        self.world, self.cluster, self.process = cluster.world, cluster, process
        self.world.check()
        self.config: dict[str, Any] = dict(config)
        cluster.producers += 1
        self.id = cluster.producers
        cluster.process_of[self.id] = process.name
        cluster.run_of[self.id] = (process.name, process.runs)
        self._metadata = _Metadata()
        self._sender = _Sender(self)
        self._known: set[str] = set()
        self._batches: list[_Batch] = []  # incomplete, in creation order
        self._fatal: BaseException | None = None
        self._epoch = 0
        self._closed = False
        self._closing = False
        self._wakeup_scheduled = False
        self._next_seq: dict[tuple[int, str, int], int] = {}
        # One connection per broker (partition p is led by broker p): a broker reads a
        # connection's requests in the order they were sent, and answers them in that order.
        self._wire_at: dict[int, float] = {}
        self._answer_at: dict[int, float] = {}
        # Batches a force-closed sender thread was about to transmit when it was stopped: it
        # finishes that iteration when it next runs (after a thaw, if the process froze first).
        self._zombie: list[_Batch] | None = None
        # Bootstrap: the cluster must answer within bootstrap_timeout_ms.
        if not cluster.up():
            cluster.fault(process)
            self.world.pause(self.config.get("bootstrap_timeout_ms", 2000) / 1000)
            raise kafka_errors.KafkaTimeoutError("Bootstrap timed out")
        self.world.pause(self.world.rng.uniform(0.001, 0.005))

    # --- the caller's side --------------------------------------------------------------

    def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> SimFuture:
        world = self.world
        world.check()
        if self._closed:
            raise kafka_errors.IllegalStateError("KafkaProducer already closed!")
        if not isinstance(headers, list) or not all(
            isinstance(h, tuple) and isinstance(h[0], str) and isinstance(h[1], bytes) for h in headers
        ):
            raise TypeError("All headers items must be (str, bytes) tuples")
        for name, _ in headers:
            name.encode()  # kafka-python encodes header names (UnicodeEncodeError on a surrogate)
        future = SimFuture(world)
        if topic not in self._known:
            max_block = self.config["max_block_ms"] / 1000
            state = self.cluster.topics.get(topic)
            if not self.cluster.up():
                self.cluster.fault(self.process)
                world.pause(max_block)
                raise kafka_errors.KafkaTimeoutError(f"Failed to update metadata after {max_block} secs.")
            world.pause(world.rng.uniform(0.001, 0.004))
            if not self.cluster.up():  # it went down before answering
                self.cluster.fault(self.process)
                world.pause(max_block)
                raise kafka_errors.KafkaTimeoutError(f"Failed to update metadata after {max_block} secs.")
            self._metadata._last_successful_refresh_ms = world.now * 1000
            if state is None or not state.exists:
                world.pause(max_block)
                if self.cluster.up():
                    self._metadata._last_successful_refresh_ms = world.now * 1000
                raise kafka_errors.KafkaTimeoutError(f"Failed to update metadata after {max_block} secs.")
            self._known.add(topic)
        record = _Record(key or b"", value or b"", tuple(headers), future)
        if record.size > self.config["max_request_size"]:
            raise kafka_errors.MessageSizeTooLargeError(f"The message is {record.size} bytes")
        partition = zlib.crc32(key or b"") % PARTITIONS
        # Only the partition's last batch takes more records (record_accumulator's deque tail).
        same = [b for b in self._batches if b.topic == topic and b.partition == partition]
        open_batch = same[-1] if same and same[-1].state == "queued" else None
        if open_batch is None or open_batch.size + record.size > self.config["batch_size"]:
            open_batch = _Batch(topic, partition, [], world.now, self._epoch)
            self._batches.append(open_batch)
        open_batch.records.append(record)
        self._wakeup(self.config.get("linger_ms", 5) / 1000)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.world.check()
        self._wakeup(0.0)
        for batch in list(self._batches):
            if batch.done is None:
                batch.done = SimFuture(self.world)
                if batch.state == "done":
                    batch.done._resolve(None)
            if not batch.done.wait(timeout):
                raise kafka_errors.KafkaTimeoutError("Timeout waiting for future")

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._force_close()

    # --- the sender (timers of the process) --------------------------------------------

    def _wakeup(self, delay: float) -> None:
        if not self._wakeup_scheduled and self._sender.alive:
            self._wakeup_scheduled = True
            self.world.at(self.world.now + delay, self._run_once, self.process)

    def _run_once(self) -> None:
        self._wakeup_scheduled = False
        if not self._sender.alive:
            return
        if self._fatal is not None:
            for batch in list(self._batches):
                self._complete(batch, self._fatal)
            return
        now = self.world.now
        timeout = self.config["delivery_timeout_ms"] / 1000
        for batch in list(self._batches):
            if batch.state == "done":
                continue
            if now >= batch.created + timeout:
                # Expired locally: a request on the wire may still be appended (the broker decides).
                self._complete(
                    batch, kafka_errors.KafkaTimeoutError(f"Expiring {len(batch.records)} record(s)")
                )
                continue
            if batch.state == "queued":
                if batch.epoch != self._epoch or batch.seq is None:
                    batch.epoch = self._epoch
                    slot = (batch.epoch, batch.topic, batch.partition)
                    batch.seq = self._next_seq.get(slot, 0)
                    self._next_seq[slot] = batch.seq + 1
                batch.state = "inflight"
                batch.attempts += 1
                self._transmit(batch)
        if any(b.state == "queued" for b in self._batches):
            self._wakeup(0.05)

    def _transmit(self, batch: _Batch) -> None:
        world, cluster = self.world, self.cluster
        batch.sent_at = world.now
        latency = world.rng.uniform(0.001, 0.01)
        if cluster.noisy(cluster.faults.slow_broker):
            # The broker is stuck (a disk stall, a leader moving): this request, and those behind
            # it on the connection, are appended late, after the client may have given up on them.
            # Within the request's own timeout (what the relay's in-doubt grace is sized on).
            latency = world.rng.uniform(0.5, self.config["request_timeout_ms"] / 1000)
        node = batch.partition
        wire_at = self._wire_at[node] = max(world.now + latency, self._wire_at.get(node, 0.0) + 1e-6)
        request_timeout = self.config["request_timeout_ms"] / 1000
        answered = {"done": False}
        client = self._sender._client
        client.on_wire += 1

        def broker() -> None:  # the broker's side: independent of the client's fate
            if not cluster.up():
                return  # nobody answers: the client's request times out
            outcome = self._broker_outcome(batch)
            if outcome is None or outcome == "lost_ack":
                cluster.append(batch, self.id)
                slot = (self.id, batch.epoch, batch.topic, batch.partition)
                cluster.expected[slot] = cluster.expected.get(slot, 0) + 1
            if outcome == "lost_ack":
                return
            if outcome == "duplicate":
                outcome = None
            delay = world.rng.uniform(0.001, 0.01)
            if cluster.noisy(cluster.faults.slow_ack):
                delay = world.rng.uniform(0.5, 2 * request_timeout)
            # One connection: answers come back in the order the requests went out.
            answer_at = self._answer_at[node] = max(world.now + delay, self._answer_at.get(node, 0.0) + 1e-6)
            world.at(answer_at, lambda: answer(outcome), self.process)

        def answer(outcome: str | BaseException | None) -> None:
            if answered["done"] or not self._sender.alive:
                return
            answered["done"] = True
            client.on_wire -= 1
            self._on_response(batch, outcome)

        def timed_out() -> None:
            if answered["done"] or not self._sender.alive:
                return
            answered["done"] = True
            client.on_wire -= 1
            self._on_response(batch, kafka_errors.RequestTimedOutError("request timed out"))

        world.at(wire_at, broker)
        world.at(world.now + request_timeout, timed_out, self.process)

    def _broker_outcome(self, batch: _Batch) -> str | BaseException | None:
        """None: appended; "duplicate": appended before; "lost_ack": appended, no answer; else
        why the broker refused the batch (nothing appended)."""
        error = self._refusal(batch)
        return error if error is None or isinstance(error, str) else typing.cast(BaseException, error)

    def _refusal(self, batch: _Batch) -> Any:
        cluster = self.cluster
        state = cluster.topics.get(batch.topic)
        if state is None or not state.exists:
            return kafka_errors.UnknownTopicOrPartitionError()
        if not state.writable and not cluster.quiet:
            return kafka_errors.TopicAuthorizationFailedError(batch.topic)
        now = self.world.now
        if not cluster.quiet and any(
            (t, p) == (batch.topic, batch.partition) and a <= now < b
            for t, p, a, b in cluster.faults.partition_outages
        ):
            return kafka_errors.NotLeaderForPartitionError()
        if any(r.size > state.max_message_bytes for r in batch.records) or (
            len(batch.records) > 1 and batch.size > state.max_message_bytes
        ):
            return kafka_errors.MessageSizeTooLargeError()
        if any(REFUSED in r.value for r in batch.records):
            return kafka_errors.InvalidRecordError()  # the whole batch, with its record_errors
        slot = (self.id, batch.epoch, batch.topic, batch.partition)
        expected = cluster.expected.get(slot, 0)
        if batch.seq is not None and batch.seq < expected:
            return "duplicate"  # a retry of a batch the broker already appended
        if batch.seq is not None and batch.seq > expected:
            return kafka_errors.OutOfOrderSequenceNumberError()
        if cluster.noisy(cluster.faults.epoch_bump):
            return kafka_errors.OutOfOrderSequenceNumberError()
        if cluster.noisy(cluster.faults.retriable):
            return kafka_errors.NotLeaderForPartitionError()
        if cluster.noisy(cluster.faults.lost_ack):
            return "lost_ack"
        return None

    def _on_response(self, batch: _Batch, outcome: str | BaseException | None) -> None:
        if batch.state == "done":
            return
        if outcome is None:
            self._complete(batch, None)
            return
        assert isinstance(outcome, BaseException)
        error = type(outcome)
        if getattr(outcome, "retriable", False) or error in _EPOCH_RESETS:
            self.cluster.fault(self.process)
        timeout = self.config["delivery_timeout_ms"] / 1000
        expired = self.world.now >= batch.created + timeout
        if error is kafka_errors.MessageSizeTooLargeError and len(batch.records) > 1 and not expired:
            self._split(batch)
        elif getattr(outcome, "retriable", False) and not expired and batch.epoch == self._epoch:
            batch.state = "queued"  # retried (idempotent: a copy the broker kept is de-duplicated)
            self._wakeup(self.config.get("retry_backoff_ms", 100) / 1000)
        elif error in _EPOCH_RESETS:
            # KIP-360: bump the epoch; every batch in flight now fails (some may land anyway).
            self._epoch += 1
            lost = [batch] + [b for b in self._batches if b is not batch and b.state == "inflight"]
            for other in lost:
                self.cluster.bumped.update(
                    dict.fromkeys(((self.id, r.headers_id) for r in other.records), self.world.now)
                )
                self._complete(other, outcome)
            self._wakeup(0.01)
        elif getattr(outcome, "retriable", False):
            self._complete(batch, outcome)  # retries exhausted: failed, no state change
        else:
            self._fatal = outcome  # classify_batch_error: non-retriable → FATAL
            if isinstance(outcome, _OWN_FAULT):
                limit = self.cluster.topics[batch.topic].max_message_bytes
                for record in batch.records:
                    if record.size > limit or REFUSED in record.value:
                        culprit = (self.process.name, record.headers_id)
                        fatals = self.cluster.culprit_fatals.setdefault(culprit, [])
                        fatals.append((self.world.now, self.process.runs))
            self._complete(batch, outcome)
            self._wakeup(0.0)

    def _split(self, batch: _Batch) -> None:
        # The broker appended nothing of it: its parts take its sequence number on.
        slot = (batch.epoch, batch.topic, batch.partition)
        if batch.seq is not None:
            self._next_seq[slot] = batch.seq
        for other in self._batches:
            if (
                other is not batch
                and other.state == "queued"
                and (other.epoch, other.topic, other.partition) == slot
            ):
                other.seq = None
        index = self._batches.index(batch)
        self._batches.remove(batch)
        parts = [_Batch(batch.topic, batch.partition, [r], batch.created, self._epoch) for r in batch.records]
        self._batches[index:index] = parts
        if batch.done is not None:
            batch.done._resolve(None)  # flush now waits on the parts it finds
        self._wakeup(0.0)

    def _complete(self, batch: _Batch, exception: BaseException | None) -> None:
        if batch.state == "done":
            return
        batch.state = "done"
        for record in batch.records:
            record.future._resolve(exception)
        if batch.done is not None:
            batch.done._resolve(None)
        if batch in self._batches:
            self._batches.remove(batch)

    def _force_close(self) -> None:
        if not self._sender.alive:
            return
        queued = [b for b in self._batches if b.state == "queued"]
        if queued and self.cluster.noisy(self.cluster.faults.zombie):
            # The thread was inside run_once: it still sends what it drained, then stops.
            self._zombie = queued
            self.world.at(
                self.world.now + self.world.rng.uniform(0.0001, 0.002), self._zombie_run, self.process
            )
        error = kafka_errors.IllegalStateError("Producer is closed forcefully.")
        for batch in list(self._batches):
            self._complete(batch, error)
        self._sender.alive = False
        self.cluster.closed_at.setdefault(self.id, self.world.now)

    def _zombie_run(self) -> None:
        batches, self._zombie = self._zombie or [], None
        for batch in batches:
            batch.sent_at = self.world.now  # sent after the close: no excuse for landing late
            slot = (self._epoch, batch.topic, batch.partition)
            batch.epoch, batch.seq = self._epoch, self._next_seq.get(slot, 0)
            self._next_seq[slot] = batch.seq + 1
            node = batch.partition
            latency = self.world.rng.uniform(0.001, 0.01)
            wire_at = max(self.world.now + latency, self._wire_at.get(node, 0.0) + 1e-6)
            self._wire_at[node] = wire_at
            self.world.at(wire_at, self._land(batch))

    def _land(self, batch: _Batch) -> Callable[[], None]:
        def land() -> None:
            if self.cluster.up() and self._broker_outcome(batch) in (None, "lost_ack"):
                self.cluster.append(batch, self.id)
                slot = (self.id, batch.epoch, batch.topic, batch.partition)
                self.cluster.expected[slot] = self.cluster.expected.get(slot, 0) + 1

        return land


def factory(cluster: Cluster, process: Process) -> Callable[..., SimProducer]:
    return lambda **config: SimProducer(cluster, process, **config)
