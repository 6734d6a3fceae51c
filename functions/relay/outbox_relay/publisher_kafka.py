"""Publishing with kafka-python 3.x: idempotent producer, acks=all, one wait per batch.

Classifies every send into a :class:`~outbox_relay.model.Delivery` (what each produce error does
to kafka-python's producer is written down, with references to its source, in
:mod:`outbox_relay.produce_errors`):

* broker down, slow, or timing out → ``UNAVAILABLE`` (never charged to a row);
* unknown topic / topic not authorized → ``TOPIC_UNAVAILABLE`` under that topic alone: never
  charged, remembered across the runs of a warm process (:mod:`outbox_relay.kafka_memory`), so
  the topic costs at most one bounded metadata wait or one isolation in that time;
* too large / invalid record → ``REJECTED`` (dead letter); the record is remembered, so while it
  waits for the dead-letter queue it is not sent again.

A non-retriable produce error (a topic denied for WriteData, a record over the broker's
``message.max.bytes``, ...) puts the producer in its fatal state: every other pending record
fails with the same exception.  The publisher stops that producer and finds the culprits by
bisection on fresh ones (:mod:`outbox_relay.isolation`), bounded by the time left.  It is
stopped only once the broker has answered every request it wrote (its sender thread still
polls): a request left on a closed connection may be appended after the re-sends, and an older
event's copy would land last.

Records the broker may still append after ``wait`` returned (a wait cut by the deadline, a batch
expired or aborted in flight, a producer whose sender thread could not be stopped in time) set
``in_doubt``.  A stopped producer's sender thread is joined, bounded by the deadline; one that
would not stop is joined before this publisher sends anything again.

The producer API used (a simulated producer implements exactly this):

* ``factory(**config)`` (``producer_config``; may raise ``KafkaError``);
* ``producer.send(topic, value=, key=, headers=) -> future``; may raise ``KafkaTimeoutError``
  (metadata wait past ``config["max_block_ms"]``, written before each send), a
  ``BrokerResponseError`` such as ``TopicAuthorizationFailedError``, ``MessageSizeTooLargeError``,
  ``TypeError``/``ValueError``, or another ``KafkaError``;
* ``producer.flush(timeout=)``: waits up to ``timeout`` per incomplete batch; may raise
  ``KafkaTimeoutError`` or another ``KafkaError``;
* ``producer.close(timeout=)``;
* ``producer._metadata._last_successful_refresh_ms`` (optional; the clock's time base, in ms);
* ``producer._sender`` (optional): ``force_close()``, ``join(timeout)``, ``is_alive()``, and
  ``_client.in_flight_request_count()`` (requests written and not answered yet);
* a future: ``is_done``, ``exception`` (``None`` once delivered), and optionally
  ``_produce_future`` (its batch: futures sharing one are one batch for ``flush``).  A future
  already done when ``send`` returns failed inside ``send`` (never reached the broker), unless
  the producer died in that batch (the sender thread may abort it that early).

All time is read from the injected :class:`~outbox_relay.ports.Clock`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kafka_errors

from . import produce_errors as pe
from .config import KafkaSettings
from .isolation import after_isolation, aggregate_of, isolate
from .kafka_memory import Refusals
from .model import CONTENT_ERRORS, Delivery, Message, SendResult
from .ports import Clock, CredentialsUnavailable, InFlight, Settled, SystemClock

log = logging.getLogger("outbox_relay")

# A metadata wait the deadline cut shorter than this is no sign of an outage (a longer one with
# no answer from the cluster is).
MIN_METADATA_WAIT_MS = 250
NO_ACK = "no acknowledgement before the deadline"
UNANSWERED = "a failed producer's requests were still unanswered at the deadline"

ProducerFactory = Callable[..., Any]
Key = tuple[str, bytes]
# index, future, and whether it had already failed when send() returned
Sent = tuple[int, Any, bool]


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
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._factory = factory
        self._extra_config = extra_config
        self._clock: Clock = clock or SystemClock()
        self._producer: Any = None
        self._in_doubt = False
        # Stopped producers whose sender thread had not exited by the deadline.
        self._stopping: list[Any] = []
        self._refusals = Refusals(self._clock)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def in_doubt(self) -> bool:
        return self._in_doubt or bool(self._stopping)

    @property
    def doubt_seconds(self) -> float:
        """How long a record given up on may still be appended: a produce request the broker
        has is answered (or given up) within ``request_timeout_ms``."""
        return self.settings.request_timeout_ms / 1000

    def new_run(self) -> None:
        self._refusals.expire()

    def close(self) -> None:
        """Flush briefly and close; used when the process is done with Kafka."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:  # closing must never fail a run
                log.debug("producer close failed", exc_info=True)
        self._reap(self._clock.monotonic() + 1.0)

    # --- producers ----------------------------------------------------------------------

    def _discard(self, deadline: float) -> None:
        """Stop the producer without sending what it holds, and wait (to the deadline) for its
        sender thread: a thread left running would send after a Lambda thaw."""
        producer, self._producer = self._producer, None
        if producer is not None and not pe.stop_producer(producer, self._clock, deadline):
            self._stopping.append(producer)

    def _bury(self, producer: Any, deadline: float) -> bool:
        """Stop a producer that failed records with its own state (fatal, or an epoch reset)
        once the broker has answered every request it wrote; False if some were still on the
        wire at the deadline (stopped all the same, and in doubt).  Re-sending sooner on a new
        producer could put a record's copy behind an older record's late-appended one."""
        # One already stopped (a send raised) was stopped without waiting: in doubt.
        quiet = self._producer is producer and pe.await_answers(producer, self._clock, deadline)
        self._in_doubt = self._in_doubt or not quiet
        self._discard(deadline)
        return quiet

    def _reap(self, deadline: float) -> bool:
        """Finish stopping earlier producers; False if one still runs."""
        self._stopping = [p for p in self._stopping if not pe.stop_producer(p, self._clock, deadline)]
        return not self._stopping

    def _ensure(self, deadline: float) -> Any:
        if self._producer is None:
            left_ms = int((deadline - self._clock.monotonic()) * 1000)
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
                raise _Unavailable(f"cannot connect: {pe.describe(exc)}") from exc
        return self._producer

    # --- sending ------------------------------------------------------------------------

    def send(self, messages: Sequence[Message], deadline: float) -> InFlight:
        """Hand the batch to the producer (its sender thread ships it); ``wait`` collects."""
        self._in_doubt = False
        if not messages:
            return Settled([])
        if not self._reap(deadline):
            error = "a stopped Kafka producer is still sending"
            return Settled([SendResult(Delivery.UNAVAILABLE, error)] * len(messages))
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
        futures: list[Sent],
        deadline: float,
    ) -> list[SendResult]:
        if futures and self._producer is producer:
            pe.await_futures(producer, [f for _, f, _ in futures], self._clock, deadline)
        failed = self._outcomes(messages, results, futures)
        # Dead (fatal state) or its epoch reset: start afresh, once its wire is empty.
        if failed and not self._bury(producer, deadline):
            for index in failed:
                results[index] = SendResult(Delivery.UNAVAILABLE, UNANSWERED)
        elif failed:
            sends = isolate(self, messages, results, failed, deadline)
            after_isolation(messages, results, list(failed))
            rejected = sum(1 for i in failed if (r := results[i]) and r.delivery is Delivery.REJECTED)
            log.info(
                "isolated a fatal produce error",
                extra={"records": len(failed), "sends": sends, "rejected": rejected},
            )
        final = [r if r is not None else SendResult(Delivery.NOT_SENT) for r in results]
        if any(r.delivery is Delivery.UNAVAILABLE for r in final):
            self._discard(deadline)  # start the next run on a fresh connection and producer epoch
        return final

    def _send_all(
        self, producer: Any, messages: Sequence[Message], deadline: float
    ) -> tuple[list[SendResult | None], list[Sent]]:
        clock = self._clock
        results: list[SendResult | None] = [None] * len(messages)
        futures: list[Sent] = []
        outage: str | None = None
        # Aggregates one of whose records failed before it was sent: their later records are not
        # sent either (they could not be marked published, and a copy sent now would land after
        # the copies of later events a previous attempt delivered: a compacting consumer would
        # keep the older state).
        stopped: set[tuple[bytes, bytes]] = set()
        for index, message in enumerate(messages):
            if index and results[index - 1] is not None:
                stopped.add(aggregate_of(messages[index - 1]))
            if outage is not None:
                results[index] = SendResult(Delivery.UNAVAILABLE, outage)
                continue
            if aggregate_of(message) in stopped:
                results[index] = SendResult(Delivery.NOT_SENT)
                continue
            known = self.known(message)
            if known is not None:
                results[index] = known
                continue
            # send() blocks for topic metadata up to max_block_ms: never past our deadline.
            left_ms = int((deadline - clock.monotonic()) * 1000)
            producer.config["max_block_ms"] = max(1, min(self.settings.max_block_ms, left_ms))
            started = clock.monotonic()
            try:
                future = producer.send(
                    message.topic, value=message.value, key=message.key, headers=message.headers
                )
            except kafka_errors.KafkaTimeoutError as exc:
                if pe.cluster_answered_since(producer, started):
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
                    outage = f"no metadata from the cluster: {pe.describe(exc)}"
                    results[index] = SendResult(Delivery.UNAVAILABLE, outage)
                continue
            except pe.TOPIC_PROBLEMS as exc:
                results[index] = self._topic_unavailable(message.topic, pe.describe(exc))
                continue
            except pe.POISON as exc:
                results[index] = SendResult(Delivery.REJECTED, pe.describe(exc))
                continue
            except (TypeError, ValueError) as exc:
                results[index] = SendResult(Delivery.REJECTED, pe.describe(exc))
                continue
            except kafka_errors.KafkaError as exc:
                outage = pe.describe(exc)
                results[index] = SendResult(Delivery.UNAVAILABLE, outage)
                self._in_doubt = self._in_doubt or bool(futures)  # earlier sends may still land
                self._discard(deadline)
                break
            except CONTENT_ERRORS as exc:
                # Anything else kafka-python raises on one record's content: charged to that row
                # (dead-lettered after max attempts), never the end of the run.  Other exceptions
                # (a bug) end the run: they would otherwise charge every row.
                results[index] = SendResult(Delivery.RETRY, pe.describe(exc))
                continue
            except Exception:
                # A bug ends the run, but records already handed over may still land: in doubt
                # (the shards are fenced for the grace period), and this producer sends no more.
                self._in_doubt = self._in_doubt or bool(futures)
                self._discard(deadline)
                raise
            futures.append((index, future, bool(future.is_done)))
            if future.is_done and future.exception is not None:  # failed inside send()
                stopped.add(aggregate_of(message))
        if outage is not None:
            sent = {i for i, _, _ in futures}
            for index in range(len(messages)):
                if results[index] is None and index not in sent:
                    results[index] = SendResult(Delivery.UNAVAILABLE, outage)
        return results, futures

    def known(self, message: Message) -> SendResult | None:
        """What this process already knows about the record's topic or the record: no send."""
        return self._refusals.known(message)

    def _topic_unavailable(self, topic: str, error: str) -> SendResult:
        return self._refusals.topic_unavailable(topic, error)

    def _outcomes(
        self, messages: Sequence[Message], results: list[SendResult | None], futures: list[Sent]
    ) -> dict[int, BaseException]:
        """Fill in the results of ``futures``; returns the records that failed with the producer
        (its fatal state or an epoch reset): they are not delivered, and whose fault is unknown."""
        failed: dict[int, BaseException] = {}
        wide: str | None = None
        # The sender thread may abort a record of a dead producer before send() even returned:
        # failing inside send() (a metadata error) is then not told from being aborted.  A dead
        # producer failed a record after its send, or failed several with one exception object.
        isolate = [
            (f.exception, early)
            for _, f, early in futures
            if f.is_done and f.exception is not None and pe.failure(f.exception) in pe.ISOLATE
        ]
        dead = any(not early for _, early in isolate) or len({id(e) for e, _ in isolate}) < len(isolate)
        for index, future, early in futures:
            exc = future.exception
            if not future.is_done:
                results[index] = SendResult(Delivery.UNAVAILABLE, NO_ACK)
                self._in_doubt = True
            elif exc is None:
                results[index] = SendResult(Delivery.DELIVERED)
            elif early and not dead:  # failed inside send(): a metadata error, nothing was sent
                results[index] = self.own_failure(messages[index], exc)
            else:
                # Expired or aborted in flight: it may still be appended.
                self._in_doubt = self._in_doubt or not early
                kind = pe.failure(exc)
                if kind is pe.Failure.EXPIRED:
                    results[index] = SendResult(Delivery.UNAVAILABLE, pe.describe(exc))
                elif kind is pe.Failure.PRODUCER_WIDE:
                    wide = pe.describe(exc)
                    results[index] = SendResult(Delivery.UNAVAILABLE, wide)
                else:
                    failed[index] = exc
        if wide is not None:  # nobody's fault: everything waits for the next run
            for index in failed:
                results[index] = SendResult(Delivery.UNAVAILABLE, wide)
            return {}
        return failed

    def own_failure(self, message: Message, exc: BaseException) -> SendResult:
        """The result of a record known to have failed for its own reason (not as a bystander)."""
        result = pe.classify(exc)
        if result.delivery is Delivery.TOPIC_UNAVAILABLE:
            return self._topic_unavailable(message.topic, result.error)
        if result.delivery is Delivery.REJECTED:
            return self._refusals.reject(message, result.error)
        return result

    def send_group(
        self,
        messages: Sequence[Message],
        results: list[SendResult | None],
        group: list[int],
        deadline: float,
    ) -> dict[int, BaseException]:
        """Send ``group`` together and fill in its results; returns the ones that failed with
        the producer."""
        try:
            producer = self._ensure(deadline)
        except _Unavailable as exc:
            for index in group:
                results[index] = SendResult(Delivery.UNAVAILABLE, str(exc))
            return {}
        part = [messages[i] for i in group]
        got, futures = self._send_all(producer, part, deadline)
        if futures and self._producer is producer:
            pe.await_futures(producer, [f for _, f, _ in futures], self._clock, deadline)
        failed = self._outcomes(part, got, futures)
        for n, index in enumerate(group):
            results[index] = got[n] if n not in failed else None
        # It is dead: the next group goes on a fresh one, once this one's wire is empty.
        if failed and not self._bury(producer, deadline):
            for n in failed:
                results[group[n]] = SendResult(Delivery.UNAVAILABLE, UNANSWERED)
            return {}
        return {group[n]: exc for n, exc in failed.items()}


class _Unavailable(Exception):
    pass


class _Batch:
    """The futures of one batch; ``wait`` waits once and classifies every send."""

    def __init__(
        self,
        publisher: KafkaPublisher,
        producer: Any,
        messages: Sequence[Message],
        results: list[SendResult | None],
        futures: list[Sent],
    ) -> None:
        self._args = (producer, messages, results, futures)
        self._publisher = publisher
        self._results: list[SendResult] | None = None

    def wait(self, deadline: float) -> list[SendResult]:
        if self._results is None:
            self._results = self._publisher._collect(*self._args, deadline=deadline)
        return self._results
