"""Publishing with kafka-python 3.x: idempotent producer, acks=all, one flush per batch.

Classifies every send into a :class:`~outbox_relay.model.Delivery`:

* broker down, slow, or timing out → ``UNAVAILABLE`` (never charged to a row);
* unknown topic / topic not authorized while the cluster answers → ``TOPIC_UNAVAILABLE``: a
  per-topic outage (a configuration mistake, a topic not created yet), not the row's fault, so
  never charged, and never mistaken for a fatal producer error; the topic is remembered for
  ``TOPIC_MEMORY_SECONDS`` (across the runs of a warm process), so a missing topic costs at
  most one bounded metadata wait in that time, not one per send, pass or run;
* too large / invalid record → ``REJECTED`` (dead letter).

A non-retriable broker error puts kafka-python's idempotent producer into a fatal state that
fails every other pending batch with the same exception, so the culprit cannot be told apart.
The publisher then drops the producer and re-sends the failed records one by one on a fresh one
(capped), which finds the culprit and delivers the bystanders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kafka_errors

from .config import KafkaSettings
from .model import CONTENT_ERRORS, AggregateKey, Delivery, Message, SendResult
from .ports import CredentialsUnavailable, InFlight, Settled

log = logging.getLogger("outbox_relay")

# Records re-sent one at a time after a fatal producer error, per publish call.
ISOLATION_CAP = 20
FLUSH_TRIES = 5
# A topic found missing or denied is not asked for again for this long (its rows wait as long,
# relay.TOPIC_WAIT_SECONDS); a topic created meanwhile is used within that time.
TOPIC_MEMORY_SECONDS = 30.0
# A metadata wait the deadline cut shorter than this is no sign of an outage (a longer one with
# no answer from the cluster is).
MIN_METADATA_WAIT_MS = 250
_POISON = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
)
_TOPIC_PROBLEMS = (kafka_errors.TopicAuthorizationFailedError, kafka_errors.UnknownTopicOrPartitionError)

ProducerFactory = Callable[..., Any]


def producer_config(settings: KafkaSettings, bootstrap_timeout_ms: int) -> dict[str, Any]:
    """kafka-python settings.  Idempotence is set explicitly so that a conflicting option raises
    instead of silently turning it off."""
    config: dict[str, Any] = {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "enable_idempotence": True,
        "acks": "all",
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": settings.linger_ms,
        "batch_size": settings.batch_bytes,
        "compression_type": None if settings.compression_type == "none" else settings.compression_type,
        "request_timeout_ms": settings.request_timeout_ms,
        "delivery_timeout_ms": settings.delivery_timeout_ms,
        "max_block_ms": settings.max_block_ms,
        "max_request_size": settings.max_request_bytes,
        "allow_auto_create_topics": False,
        "bootstrap_timeout_ms": bootstrap_timeout_ms,
        "reconnect_backoff_max_ms": 1000,
    }
    return config


class KafkaPublisher:
    """:class:`~outbox_relay.ports.Publisher` over one lazily created, reused KafkaProducer."""

    def __init__(
        self,
        settings: KafkaSettings,
        factory: ProducerFactory = KafkaProducer,
        extra_config: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self._factory = factory
        self._extra_config = extra_config
        self._producer: Any = None
        self._in_doubt = False
        # Topics found missing or denied: not asked for again (send() would block) until then.
        self._topic_down: dict[str, tuple[str, float]] = {}  # topic -> (why, until monotonic)

    @property
    def in_doubt(self) -> bool:
        return self._in_doubt

    def new_run(self) -> None:
        now = time.monotonic()
        self._topic_down = {t: down for t, down in self._topic_down.items() if down[1] > now}

    def close(self) -> None:
        """Flush briefly and close; used when the process is done with Kafka."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:  # closing must never fail a run
                log.debug("producer close failed", exc_info=True)

    def _discard(self) -> None:
        """Drop the producer without waiting: its buffers are abandoned, not frozen for later."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=0)
        except kafka_errors.KafkaTimeoutError:
            # kafka-python 3.0.12's close() flushes first and raises when that times out, before
            # it stops the sender thread; stop it ourselves so nothing is sent later.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
        except Exception:
            log.debug("producer discard failed", exc_info=True)

    def _ensure(self, deadline: float) -> Any:
        if self._producer is None:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 100:
                raise _Unavailable("no time left to connect to Kafka")
            config = producer_config(self.settings, min(self.settings.max_block_ms, left_ms))
            if self._extra_config is not None:
                try:
                    config.update(self._extra_config())
                except CredentialsUnavailable as exc:  # the SCRAM secret
                    raise _Unavailable(f"cannot connect: {exc}") from exc
            try:
                self._producer = self._factory(**config)
            except kafka_errors.KafkaError as exc:
                raise _Unavailable(f"cannot connect: {_describe(exc)}") from exc
        return self._producer

    def send(self, messages: Sequence[Message], deadline: float) -> InFlight:
        """Hand the batch to the producer (its sender thread ships it); ``wait`` collects."""
        self._in_doubt = False
        if not messages:
            return Settled([])
        try:
            producer = self._ensure(deadline)
        except _Unavailable as exc:
            return Settled([SendResult(Delivery.UNAVAILABLE, str(exc))] * len(messages))
        results, futures = self._send_all(producer, messages, deadline)
        return _Batch(self, producer, messages, results, futures)

    def _collect(
        self,
        producer: Any,
        messages: Sequence[Message],
        results: list[SendResult | None],
        futures: list[tuple[int, Any]],
        deadline: float,
    ) -> list[SendResult]:
        if futures and self._producer is producer:
            self._flush(producer, deadline)
        poisoned: list[int] = []
        for index, future in futures:
            if not future.is_done:
                results[index] = SendResult(Delivery.UNAVAILABLE, "no acknowledgement before the deadline")
            elif future.exception is None:
                results[index] = SendResult(Delivery.DELIVERED)
            elif isinstance(future.exception, _TOPIC_PROBLEMS):
                # A denied topic comes back here (send() turns the metadata error into a failed
                # future): a topic outage, not a fatal producer state.
                results[index] = self._topic_unavailable(messages[index].topic, _describe(future.exception))
            else:
                result = _classify(future.exception)
                results[index] = result
                if not getattr(future.exception, "retriable", False):
                    poisoned.append(index)
        if poisoned:
            # The producer may be in a fatal state: replace it and find the culprit alone.
            self._discard()
            self._isolate(messages, results, poisoned, deadline)
            _after_isolation(messages, results, poisoned)
        final = [r if r is not None else SendResult(Delivery.NOT_SENT) for r in results]
        if any(r.delivery is Delivery.UNAVAILABLE for r in final):
            self._discard()  # start the next run on a fresh connection and producer epoch
        return final

    def _send_all(
        self, producer: Any, messages: Sequence[Message], deadline: float
    ) -> tuple[list[SendResult | None], list[tuple[int, Any]]]:
        results: list[SendResult | None] = [None] * len(messages)
        futures: list[tuple[int, Any]] = []
        outage: str | None = None
        for index, message in enumerate(messages):
            if outage is not None:
                results[index] = SendResult(Delivery.UNAVAILABLE, outage)
                continue
            down = self._topic_down.get(message.topic)
            if down is not None and down[1] > time.monotonic():  # remembered, not for ever
                results[index] = SendResult(Delivery.TOPIC_UNAVAILABLE, down[0])
                continue
            # send() blocks for topic metadata up to max_block_ms: never past our deadline.
            left_ms = int((deadline - time.monotonic()) * 1000)
            producer.config["max_block_ms"] = max(1, min(self.settings.max_block_ms, left_ms))
            started = time.monotonic()
            try:
                future = producer.send(
                    message.topic, value=message.value, key=message.key, headers=message.headers
                )
            except kafka_errors.KafkaTimeoutError as exc:
                if _cluster_answered_since(producer, started):
                    error = f"topic {message.topic!r} does not exist or has no leader"
                    results[index] = self._topic_unavailable(message.topic, error)
                elif left_ms < min(self.settings.max_block_ms, MIN_METADATA_WAIT_MS):
                    # The deadline, not the cluster, cut the wait to almost nothing: that tells
                    # nothing about Kafka; this row and the rest wait for the next run, untouched.
                    for rest in range(index, len(messages)):
                        if results[rest] is None:
                            results[rest] = SendResult(Delivery.NOT_SENT)
                    break
                else:
                    outage = f"no metadata from the cluster: {_describe(exc)}"
                    results[index] = SendResult(Delivery.UNAVAILABLE, outage)
                continue
            except _TOPIC_PROBLEMS as exc:
                results[index] = self._topic_unavailable(message.topic, _describe(exc))
                continue
            except _POISON as exc:
                results[index] = SendResult(Delivery.REJECTED, _describe(exc))
                continue
            except (TypeError, ValueError) as exc:
                results[index] = SendResult(Delivery.REJECTED, _describe(exc))
                continue
            except kafka_errors.KafkaError as exc:
                outage = _describe(exc)
                results[index] = SendResult(Delivery.UNAVAILABLE, outage)
                self._in_doubt = bool(futures)  # earlier sends may still be on the wire
                self._discard()
                break
            except CONTENT_ERRORS as exc:
                # Anything else kafka-python raises on one record's content: charged to that row
                # (dead-lettered after max attempts), never the end of the run.  Other exceptions
                # (a bug) end the run: they would otherwise charge every row.
                results[index] = SendResult(Delivery.RETRY, _describe(exc))
                continue
            except Exception:
                # A bug ends the run, but records already handed over may still land: in doubt
                # (the shards are fenced for the grace period), and this producer sends no more.
                self._in_doubt = bool(futures)
                self._discard()
                raise
            futures.append((index, future))
        if outage is not None:
            for index in range(len(messages)):
                if results[index] is None and all(i != index for i, _ in futures):
                    results[index] = SendResult(Delivery.UNAVAILABLE, outage)
        return results, futures

    def _topic_unavailable(self, topic: str, error: str) -> SendResult:
        self._topic_down[topic] = (error, time.monotonic() + TOPIC_MEMORY_SECONDS)
        log.warning("topic unavailable", extra={"topic": topic, "error": error})
        return SendResult(Delivery.TOPIC_UNAVAILABLE, error)

    def _flush(self, producer: Any, deadline: float) -> None:
        for _ in range(FLUSH_TRIES):
            try:
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))
                return
            except kafka_errors.KafkaTimeoutError:
                break
            except kafka_errors.KafkaError as exc:
                # kafka-python 3.0.12 can raise UnknownError("Future not done") from flush()
                # while it splits an oversized batch; the split batches are still pending.
                log.info("flush interrupted, flushing again", extra={"error": _describe(exc)})
        # Records may still reach the broker after we return: the caller keeps the shards
        # fenced for a grace period, and this producer never sends again.
        self._in_doubt = True
        self._discard()

    def _isolate(
        self,
        messages: Sequence[Message],
        results: list[SendResult | None],
        poisoned: list[int],
        deadline: float,
    ) -> None:
        failed_keys: set[AggregateKey] = set()
        for n, index in enumerate(poisoned):
            message = messages[index]
            key = (message.topic, message.key.decode(errors="replace"))
            if key in failed_keys or n >= ISOLATION_CAP:
                results[index] = SendResult(Delivery.NOT_SENT)
                continue
            try:
                producer = self._ensure(deadline)
                future = producer.send(
                    message.topic, value=message.value, key=message.key, headers=message.headers
                )
                self._flush(producer, deadline)
            except _Unavailable as exc:
                results[index] = SendResult(Delivery.UNAVAILABLE, str(exc))
                failed_keys.add(key)
                continue
            except _TOPIC_PROBLEMS as exc:
                results[index] = self._topic_unavailable(message.topic, _describe(exc))
                failed_keys.add(key)
                continue
            except kafka_errors.KafkaError as exc:
                results[index] = _classify(exc)
                failed_keys.add(key)
                self._discard()
                continue
            if not future.is_done:
                results[index] = SendResult(Delivery.UNAVAILABLE, "no acknowledgement before the deadline")
            elif future.exception is None:
                results[index] = SendResult(Delivery.DELIVERED)
            elif isinstance(future.exception, _TOPIC_PROBLEMS):
                results[index] = self._topic_unavailable(message.topic, _describe(future.exception))
            else:
                results[index] = _classify(future.exception)
                self._discard()
            if results[index] != SendResult(Delivery.DELIVERED):
                failed_keys.add(key)
        rejected = sum(1 for i in poisoned if (r := results[i]) and r.delivery is Delivery.REJECTED)
        log.info("isolated a fatal produce error", extra={"records": len(poisoned), "rejected": rejected})


class _Unavailable(Exception):
    pass


class _Batch:
    """The futures of one batch; ``wait`` flushes once and classifies every send."""

    def __init__(
        self,
        publisher: KafkaPublisher,
        producer: Any,
        messages: Sequence[Message],
        results: list[SendResult | None],
        futures: list[tuple[int, Any]],
    ) -> None:
        self._args = (producer, messages, results, futures)
        self._publisher = publisher
        self._results: list[SendResult] | None = None

    def wait(self, deadline: float) -> list[SendResult]:
        if self._results is None:
            self._results = self._publisher._collect(*self._args, deadline=deadline)
        return self._results


def _after_isolation(
    messages: Sequence[Message], results: list[SendResult | None], poisoned: list[int]
) -> None:
    """Later records of a key whose earlier record was isolated are not delivered in order.

    After OutOfOrderSequence, UnknownProducerId or InvalidProducerEpoch kafka-python bumps the
    epoch without aborting: a later batch of the same key may be delivered while the failed one
    is not, and the failed record's isolated re-send then lands after it.  So every record after
    the first isolated one of its (topic, key) that the original batch delivered counts as not
    sent: the contiguous-prefix rule keeps it pending and the next pass sends it again, after.
    """
    first: dict[tuple[str, bytes], int] = {}
    for index in poisoned:
        first.setdefault((messages[index].topic, messages[index].key), index)
    isolated = set(poisoned)
    for index, message in enumerate(messages):
        start = first.get((message.topic, message.key))
        if start is not None and index > start and index not in isolated:
            result = results[index]
            if result is not None and result.delivery is Delivery.DELIVERED:
                results[index] = SendResult(Delivery.NOT_SENT)


def _classify(exc: BaseException) -> SendResult:
    if isinstance(exc, _POISON):
        return SendResult(Delivery.REJECTED, _describe(exc))
    if isinstance(exc, _TOPIC_PROBLEMS):
        return SendResult(Delivery.TOPIC_UNAVAILABLE, _describe(exc))
    return SendResult(Delivery.UNAVAILABLE, _describe(exc))


def _cluster_answered_since(producer: Any, started: float) -> bool:
    """Did a metadata refresh succeed while send() waited?  Then the brokers are up and only this
    topic is missing.  (kafka-python keeps this on its cluster object; monotonic ms.)"""
    last_ok = getattr(getattr(producer, "_metadata", None), "_last_successful_refresh_ms", 0) or 0
    return bool(last_ok / 1000.0 >= started)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:500] if text else name
