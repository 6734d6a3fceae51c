"""Finding the culprits of a fatal produce error by bisection (see :mod:`produce_errors`).

After a fatal state every pending record failed with the culprit's exception, so which records
are to blame is unknown.  The failed records are sent again in halves, in batch order, each group
on a live producer; a group that fails is halved again, a group of one that fails is its own
culprit.  One culprit among n records costs about 2·log2(n) group sends, wherever it sits; every
send is bounded by the time left and their number by ``ISOLATION_SENDS``.  What a send taught
(a topic denied, a record rejected) is remembered by the publisher, so a record left unsent by the
cap costs nothing for it next time.

First-copy order: a record is re-sent only if no earlier record of its (topic, key) in the batch
ended undelivered, so no re-send lands before an earlier record of its key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kafka import errors as kafka_errors

from . import produce_errors as pe
from .model import Delivery, Message, SendResult
from .ports import Clock

# Group sends one isolation may make (a bisection finds one culprit among n in ~2·log2(n)).
ISOLATION_SENDS = 40
# Isolation sends nothing with less time left than this (connecting alone needs 0.1 s).
MIN_ISOLATION_SECONDS = 0.2

Key = tuple[bytes, bytes]  # (aggregate_type, aggregate_id) as sent
Results = list[SendResult | None]


class GroupSender(Protocol):
    """What isolation needs of the publisher."""

    @property
    def clock(self) -> Clock: ...

    def known(self, message: Message) -> SendResult | None:
        """The result without a send, when its topic or the record itself is remembered."""
        ...

    def own_failure(self, message: Message, exc: BaseException) -> SendResult:
        """The result of a record that failed for its own reason (remembered)."""
        ...

    def send_group(
        self, messages: Sequence[Message], results: Results, group: list[int], deadline: float
    ) -> dict[int, BaseException]:
        """Send ``group`` together on a live producer, fill in its results, and return the ones
        that failed with the producer (then replaced)."""
        ...


def isolate(
    sender: GroupSender,
    messages: Sequence[Message],
    results: Results,
    failed: dict[int, BaseException],
    deadline: float,
) -> int:
    """Settle the records of ``failed`` (index → exception); returns the group sends made."""
    key = [aggregate_of(m) for m in messages]
    # The first record of each key that is not delivered: later ones of the key wait.
    stop: dict[Key, int] = {}

    def stopped(index: int) -> None:
        stop[key[index]] = min(stop.get(key[index], index), index)

    for index, result in enumerate(results):
        if index not in failed and (result is None or result.delivery is not Delivery.DELIVERED):
            stopped(index)
    # In index order: (indices, errors) failed together and needs no send; (indices, None) does.
    work: deque[tuple[list[int], dict[int, BaseException] | None]] = deque([(sorted(failed), failed)])
    sends, halt, state = 0, False, _State()
    delivered_in: dict[int, int] = {}  # index -> the group send that delivered it (0: the batch)
    while work:
        group, errors = work.popleft()
        todo = []
        for index in group:
            known = sender.known(messages[index])
            if stop.get(key[index], index) < index:
                results[index] = SendResult(Delivery.NOT_SENT)
            elif known is not None:
                results[index] = known
            else:
                todo.append(index)
                continue
            stopped(index)
        if not todo:
            continue
        if errors is not None:
            # Only when none was left out is the culprit sure to be among them.
            whole = len(todo) == len(group)
            halves = _split(sender, messages, results, todo, errors, state) if whole else [todo]
            work.extendleft((half, None) for half in reversed(halves))
            for index in todo:
                if results[index] is not None:
                    stopped(index)
            continue
        left = deadline - sender.clock.monotonic()
        if halt or sends >= ISOLATION_SENDS or left < MIN_ISOLATION_SECONDS:
            for index in todo:
                results[index] = SendResult(Delivery.NOT_SENT)
                stopped(index)
            continue
        sends += 1
        again = sender.send_group(messages, results, todo, deadline)
        for index in todo:
            if index not in again and results[index] != SendResult(Delivery.DELIVERED):
                stopped(index)
            elif index not in again:
                delivered_in[index] = sends
        if again:
            work.appendleft((sorted(again), again))
        # Kafka itself failed (an outage, the deadline): the run stops; the rest waits.
        halt = any((r := results[i]) is not None and r.delivery is Delivery.UNAVAILABLE for i in todo)
    _keep_last_copies_in_order(key, results, delivered_in)
    return sends


def _keep_last_copies_in_order(key: list[Key], results: Results, delivered_in: dict[int, int]) -> None:
    """A record delivered by an earlier send than an earlier record of its key is not counted
    delivered: the earlier record's copy landed after it (an epoch bump fails a record in flight
    while the one behind it goes through, and the failed one is delivered by a later send), so
    it goes again in the next pass, after.  Found by the simulation."""
    latest: dict[Key, int] = {}
    for index, result in enumerate(results):
        if result is None or result.delivery is not Delivery.DELIVERED:
            continue
        sent = delivered_in.get(index, 0)
        if sent < latest.get(key[index], 0):
            results[index] = SendResult(Delivery.NOT_SENT)
        else:
            latest[key[index]] = sent


def _split(
    sender: GroupSender,
    messages: Sequence[Message],
    results: Results,
    todo: list[int],
    errors: dict[int, BaseException],
    state: _State,
) -> list[list[int]]:
    """Records that failed together: conclude when the culprit is certain, else split them."""
    first = errors[todo[0]]
    if len(todo) == 1:
        if pe.failure(first) is pe.Failure.FATAL or todo[0] in state.alone:
            # Alone, it failed for its own reason (a bystander needs a culprit beside it).
            results[todo[0]] = sender.own_failure(messages[todo[0]], first)
            return []
        state.alone.add(todo[0])  # an epoch reset is nobody's fault: send it once more, alone
        return [todo]
    by_topic: dict[str, list[int]] = {}
    for index in todo:
        by_topic.setdefault(messages[index].topic, []).append(index)
    if all(isinstance(errors[i], pe.TOPIC_PROBLEMS) for i in todo):
        if len(by_topic) == 1:
            # Only one topic's records failed, with its denial: the culprit is that topic.
            for index in todo:
                results[index] = sender.own_failure(messages[index], errors[index])
            return []
        # A topic is denied: try each topic on its own (order only matters within a topic).
        return list(by_topic.values())
    if all(isinstance(errors[i], _SIZE) for i in todo) and state.probe_pays(results):
        # Too large: the largest record is the likely culprit; try it alone first (it must be
        # the first of its key here, so nothing of its key is sent after it).
        heads = {(messages[i].topic, messages[i].key): i for i in reversed(todo)}
        probe = max(heads.values(), key=lambda i: len(messages[i].value))
        state.probes.append(probe)
        return [[probe], [i for i in todo if i != probe]]
    half = (len(todo) + 1) // 2
    return [todo[:half], todo[half:]]


_SIZE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)


@dataclass
class _State:
    alone: set[int] = field(default_factory=set)  # sent alone after an epoch reset
    probes: list[int] = field(default_factory=list)  # largest records tried alone

    def probe_pays(self, results: Results) -> bool:
        """Probing by size goes on while every probe was a culprit (else: bisection)."""
        return all(
            (r := results[i]) is not None and r.delivery is not Delivery.DELIVERED for i in self.probes
        )


def after_isolation(messages: Sequence[Message], results: Results, isolated: list[int]) -> None:
    """Later records of a key whose earlier record was isolated are not delivered in order.

    After OutOfOrderSequence, UnknownProducerId or InvalidProducerEpoch kafka-python bumps the
    epoch without aborting: a later batch of the same key may be delivered while the failed one
    is not, and the failed record's isolated re-send then lands after it.  So every record after
    the first isolated one of its (topic, key) that the original batch delivered counts as not
    sent: the contiguous-prefix rule keeps it pending and the next pass sends it again, after.
    """
    first: dict[Key, int] = {}
    for index in sorted(isolated):
        first.setdefault(aggregate_of(messages[index]), index)
    done = set(isolated)
    for index, message in enumerate(messages):
        start = first.get(aggregate_of(message))
        if start is not None and index > start and index not in done:
            result = results[index]
            if result is not None and result.delivery is Delivery.DELIVERED:
                results[index] = SendResult(Delivery.NOT_SENT)


def aggregate_of(message: Message) -> tuple[bytes, bytes]:
    """The record's aggregate (its ``aggregate_type`` header and its key): the unit of order,
    whatever topic each of its records goes to (a row may name its own topic)."""
    return (dict(message.headers).get("aggregate_type", b""), message.key)
