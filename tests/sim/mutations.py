"""Known bugs, put back on purpose: the simulation must report each (``--mutation NAME``).

A simulation that never fails measures nothing.  Each mutation re-introduces, for one run, a bug
the simulation was built to find (issue 15's findings, as the code had them), by patching the
real module at one seam; tests/sim/test_sim.py checks that the seeds listed for it report it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kafka import errors as kafka_errors

from outbox_relay import isolation, kafka_memory, ordering, produce_errors, publisher_kafka
from outbox_relay.model import Delivery, Message, SendResult


@contextlib.contextmanager
def _patch(target: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, saved)


@contextlib.contextmanager
def published_without_ack() -> Iterator[None]:
    """The checker's own check: every sent row is marked published, delivered or not."""
    settle = ordering.settle

    def mutated(sent: Sequence[tuple[Any, SendResult]]) -> ordering.Settlement:
        out = settle(sent)
        out.published = [record for record, _ in sent]
        out.retry, out.waiting, out.rejected = [], [], []
        return out

    with _patch(ordering, "settle", mutated):
        yield


@contextlib.contextmanager
def bystanders_blamed() -> Iterator[None]:
    """Finding 3: records a fatal producer aborted with TopicAuthorizationFailed are filed as a
    topic outage under their own topics, and the producer is kept."""
    outcomes = publisher_kafka.KafkaPublisher._outcomes

    def mutated(
        self: publisher_kafka.KafkaPublisher,
        messages: Sequence[Message],
        results: list[SendResult | None],
        futures: list[Any],
    ) -> dict[int, BaseException]:
        failed = outcomes(self, messages, results, futures)
        for index, exc in list(failed.items()):
            if isinstance(exc, kafka_errors.TopicAuthorizationFailedError):
                results[index] = self._topic_unavailable(messages[index].topic, produce_errors.describe(exc))
                del failed[index]
        return failed

    with _patch(publisher_kafka.KafkaPublisher, "_outcomes", mutated):
        yield


@contextlib.contextmanager
def sender_not_joined() -> Iterator[None]:
    """Finding 4: a discarded producer's sender thread is stopped but never joined, and what may
    still land does not put the run in doubt (its shards are released without grace)."""

    def mutated(producer: Any, clock: Any, deadline: float) -> bool:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        return True

    in_doubt = property(lambda self: False)
    with (
        _patch(produce_errors, "stop_producer", mutated),
        _patch(publisher_kafka.KafkaPublisher, "in_doubt", in_doubt),
    ):
        yield


@contextlib.contextmanager
def isolation_capped() -> Iterator[None]:
    """Finding 6, as the code had it: isolation re-sends the failed records one at a time, in
    batch order, up to a cap; a culprit past it is NOT_SENT and the next pass repeats the fatal
    state; a rejected record is not remembered (while its letter waits, it is sent again)."""

    def mutated(
        sender: Any,
        messages: Sequence[Message],
        results: Any,
        failed: dict[int, BaseException],
        deadline: float,
    ) -> int:
        sends = 0
        for index in sorted(failed):
            if sends >= 20:
                results[index] = SendResult(Delivery.NOT_SENT)
                continue
            sends += 1
            again = sender.send_group(messages, results, [index], deadline)
            if index in again:
                results[index] = sender.own_failure(messages[index], again[index])
        return sends

    with (
        _patch(publisher_kafka, "isolate", mutated),
        _patch(kafka_memory, "REJECTED_MEMORY_SECONDS", 0.0),
    ):
        yield


@contextlib.contextmanager
def isolation_ignores_earlier_failures() -> Iterator[None]:
    """Finding 7, as the code had it: isolation re-sends a poisoned record of a key whose earlier
    record in the batch failed otherwise (its `stop` starts empty), so a later event's first copy
    can land first.  The code then also sent a key's later records after an earlier one failed
    before it was sent; that defence, added since, alone hides most of the isolation half, so
    both are put back."""
    isolate = isolation.isolate

    def mutated(
        sender: Any,
        messages: Sequence[Message],
        results: Any,
        failed: dict[int, BaseException],
        deadline: float,
    ) -> int:
        delivered = SendResult(Delivery.DELIVERED)
        shown = [r if i in failed else delivered for i, r in enumerate(results)]
        sends = isolate(sender, messages, shown, failed, deadline)
        for index in failed:
            results[index] = shown[index]
        return sends

    with (
        _patch(publisher_kafka, "isolate", mutated),
        _patch(publisher_kafka, "aggregate_of", lambda message: object()),  # nothing is stopped
    ):
        yield


@contextlib.contextmanager
def dead_producer_closed_at_once() -> Iterator[None]:
    """A producer that failed with its own state is stopped at once, with requests still on the
    wire: one appended after isolation's re-sends puts an older event's copy last."""
    with _patch(produce_errors, "await_answers", lambda producer, clock, deadline: True):
        yield


MUTATIONS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "published_without_ack": published_without_ack,
    "bystanders_blamed": bystanders_blamed,
    "sender_not_joined": sender_not_joined,
    "isolation_capped": isolation_capped,
    "isolation_ignores_earlier_failures": isolation_ignores_earlier_failures,
    "dead_producer_closed_at_once": dead_producer_closed_at_once,
}
