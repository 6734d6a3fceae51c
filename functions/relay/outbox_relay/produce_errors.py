"""What kafka-python 3.0.12's idempotent producer does after each produce error, read from its
source (``kafka/producer/``), and what that means for one outbox row.

**Where a future fails.**

* In ``KafkaProducer.send`` itself (``kafka.py``): a metadata error for the topic
  (``_wait_on_metadata`` raises a ``BrokerResponseError``, e.g. ``TopicAuthorizationFailedError``
  when the topic is not even describable) comes back as a future that is already failed when
  ``send`` returns.  It never reached the accumulator or the broker and leaves the producer as it
  was.  ``send`` raises for a record over ``max_request_size`` (``_ensure_valid_record_size``),
  for a metadata wait past ``max_block_ms`` (``KafkaTimeoutError``) and for bad arguments.
* In the sender thread (``sender.py``, ``Sender._dispatch_error``): a batch the broker answered
  with an error, or one that failed on the client (connection lost: ``_failed_produce``; expired
  past ``delivery_timeout_ms``: ``_send_producer_data``).  The batch is split and re-sent when it
  is too large and holds more than one record (``_can_split``), re-sent when the error is a
  ``RetriableError`` and time is left (``_can_retry``); otherwise it fails, and
  ``TransactionManager.classify_batch_error`` (``transaction_manager.py``) decides what the
  producer does next:

  - ``RetriableError`` (its time ran out: ``KafkaTimeoutError`` "Expiring N record(s)", or an
    in-flight batch of an older epoch): only that batch fails.  If an expired batch had been
    sent before (``batch.in_retry()``), ``reset_producer_id`` gives the producer a new id.
    The records may have been appended all the same: **in doubt**.
  - ``OutOfOrderSequenceNumberError``, ``UnknownProducerIdError``, ``InvalidProducerEpochError``
    (``_NEEDS_EPOCH_BUMP_ERRORS``, brokers >= 2.5): ``bump_producer_id_and_epoch``.  In-flight
    batches of the old epoch fail; batches still in the accumulator are sent later under the new
    epoch, so a later batch of a partition can be appended while an earlier one was not.
  - everything else that is not retriable (``ERROR_CLASS_FATAL`` for a non-transactional
    producer: ``TopicAuthorizationFailedError``, ``MessageSizeTooLargeError`` of a one-record
    batch, ``InvalidRecordError``, ``CorruptRecordError``, ``ClusterAuthorizationFailedError``,
    the plain ``KafkaError`` of the other records of a batch with ``record_errors``, ...):
    ``transition_to_fatal_error``.  From then on ``Sender.run_once`` calls
    ``_maybe_abort_batches(last_error)`` → ``RecordAccumulator.abort_batches``: **every**
    incomplete batch, in flight or not, of every topic, fails with the culprit's exception
    object, and so does every batch appended later (``send`` does not refuse: the idempotent
    producer never checks the fatal state there).  The producer is useless and must be
    replaced; the exception a record's future holds does not tell the culprit from a
    bystander, and an aborted batch that was in flight may still be appended: **in doubt**.

``KafkaProducer.flush(timeout)`` (``RecordAccumulator.await_flush_completion``) waits up to
``timeout`` *per incomplete batch*, and raises ``UnknownError("Future not done")`` while a batch
is being split.  ``KafkaProducer.close(timeout)`` flushes first and raises on a timeout before
it stops the sender; ``Sender.force_close`` stops it without sending what is left, but the
thread finishes its current loop (which may write a request) before it exits.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any

from kafka import errors as kafka_errors

from .model import Delivery, SendResult
from .ports import Clock

log = logging.getLogger("outbox_relay")

# Less time left than this ends a wait (a simulated clock would otherwise halve it for ever).
MIN_WAIT_SECONDS = 0.001
# How often a dead producer's requests on the wire are counted while waiting for their answers.
ANSWER_POLL_SECONDS = 0.002

# The record itself is unacceptable: dead-letter it.
POISON: tuple[type[Exception], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
)
# Its topic is missing or may not be written: a per-topic outage, never the row's fault.
TOPIC_PROBLEMS: tuple[type[Exception], ...] = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.UnknownTopicOrPartitionError,
)
# transaction_manager.py, TransactionManager._NEEDS_EPOCH_BUMP_ERRORS.
EPOCH_BUMP: tuple[type[Exception], ...] = (
    kafka_errors.OutOfOrderSequenceNumberError,
    kafka_errors.UnknownProducerIdError,
    kafka_errors.InvalidProducerEpochError,
)
# Fatal for every record whatever it holds (TransactionManager._FATAL_ERRORS, the sender's
# authentication failures, a producer closed under us): an outage, no isolation.
PRODUCER_WIDE: tuple[type[Exception], ...] = (
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TransactionalIdAuthorizationFailedError,
    kafka_errors.ProducerFencedError,
    kafka_errors.InvalidTxnStateError,
    kafka_errors.SaslAuthenticationFailedError,
    kafka_errors.IllegalStateError,
)


class Failure(enum.Enum):
    """What a failed future says about the producer (see the module docstring)."""

    EXPIRED = "expired"  # retriable, out of time: only this batch failed; maybe appended
    EPOCH_BUMP = "epoch_bump"  # producer state reset: re-send; later batches may have landed
    FATAL = "fatal"  # the producer is dead and every other pending record failed with it
    PRODUCER_WIDE = "producer_wide"  # fatal, and no record is to blame


# Failures whose records are isolated: they failed with the producer, whoever is to blame.
ISOLATE = frozenset({Failure.FATAL, Failure.EPOCH_BUMP})


def failure(exc: BaseException) -> Failure:
    """How the sender thread failed a future with ``exc`` (``Sender._dispatch_error``)."""
    if isinstance(exc, kafka_errors.RetriableError):
        return Failure.EXPIRED
    if isinstance(exc, EPOCH_BUMP):
        return Failure.EPOCH_BUMP
    if isinstance(exc, PRODUCER_WIDE):
        return Failure.PRODUCER_WIDE
    return Failure.FATAL


def classify(exc: BaseException) -> SendResult:
    """The result of a record known to have failed on its own with ``exc``."""
    if isinstance(exc, POISON):
        return SendResult(Delivery.REJECTED, describe(exc))
    if isinstance(exc, TOPIC_PROBLEMS):
        return SendResult(Delivery.TOPIC_UNAVAILABLE, describe(exc))
    return SendResult(Delivery.UNAVAILABLE, describe(exc))


def describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {text}"[:500] if text else name


def await_futures(producer: Any, futures: Sequence[Any], clock: Clock, deadline: float) -> bool:
    """Wait for ``futures`` of ``producer`` until the deadline at the latest; True if all are done.

    ``flush(timeout)`` waits up to ``timeout`` for *each* incomplete batch in turn.  With ``b``
    incomplete batches (a future's ``_produce_future`` is its batch; a future without one counts
    as a batch of its own), ``(deadline - now) / b`` bounds a call by the deadline: the producer
    holds no records but these (the publisher drops one it stopped waiting for).
    """
    while True:
        batches = {id(getattr(f, "_produce_future", f)) for f in futures if not f.is_done}
        if not batches:
            return True
        left = deadline - clock.monotonic()
        if left < MIN_WAIT_SECONDS:
            return False
        try:
            producer.flush(timeout=left / len(batches))
        except kafka_errors.KafkaTimeoutError:
            continue
        except kafka_errors.KafkaError as exc:
            # kafka-python 3.0.12 raises UnknownError("Future not done") from flush() while it
            # splits an oversized batch; the split batches are still pending.
            log.info("flush interrupted, flushing again", extra={"error": describe(exc)})
            clock.sleep(min(0.01, max(0.0, deadline - clock.monotonic())))


def await_answers(producer: Any, clock: Clock, deadline: float) -> bool:
    """Wait until every request ``producer`` wrote has been answered (or timed out by the client),
    to the deadline at the latest; True once none is left on the wire.

    A dead producer's sender thread keeps polling its connections (``Sender.run_once`` in the
    fatal state), so the requests of batches it aborted are still answered.  Stopping it before
    that closes connections whose requests the broker may append later, after a re-send of the
    same or a later record on a new producer: the older event's copy would land last.  So a dead
    producer is stopped only once its wire is empty.  (kafka-python keeps the count on its
    network client: ``producer._sender._client.in_flight_request_count()``.)
    """
    client = getattr(getattr(producer, "_sender", None), "_client", None)
    count = getattr(client, "in_flight_request_count", None)
    if count is None:
        return True
    while True:
        try:
            if not count():
                return True
        except Exception:  # the count is read from another thread's dicts: ask again
            log.debug("in-flight count failed", exc_info=True)
        left = deadline - clock.monotonic()
        if left < MIN_WAIT_SECONDS:
            return False
        clock.sleep(min(ANSWER_POLL_SECONDS, left))


def stop_producer(producer: Any, clock: Clock, deadline: float) -> bool:
    """Stop ``producer`` without sending what it holds and join its sender thread, to the
    deadline at the latest; False if the thread still runs (it may yet write a request)."""
    sender = getattr(producer, "_sender", None)
    try:
        if sender is not None:
            sender.force_close()
            sender.join(max(0.0, deadline - clock.monotonic()))
            if sender.is_alive():
                return False
        producer.close(timeout=0)  # its sender has stopped: this only marks it closed
    except Exception:
        log.debug("producer stop failed", exc_info=True)
    return True


def cluster_answered_since(producer: Any, started: float) -> bool:
    """Did a metadata refresh succeed while send() waited?  Then the brokers are up and only this
    topic is missing.  (kafka-python keeps this on its cluster object, in monotonic ms.)  Strictly
    after the wait began: an answer from the instant it began is the previous send's, and the
    cluster may have gone down since (found by the simulation, seed 12207: an outage filed as the
    topic missing, its rows held back for the topic memory)."""
    last_ok = getattr(getattr(producer, "_metadata", None), "_last_successful_refresh_ms", 0) or 0
    return bool(last_ok / 1000.0 > started)
