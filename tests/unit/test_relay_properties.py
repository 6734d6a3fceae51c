"""Property: whatever Kafka answers, pass after pass, the head-of-line and contiguous-prefix rules
leave every aggregate's *last* copies in outbox order, and mark published only what Kafka holds.

Kafka's answers are random, except that a rejection is a property of the record (too large,
invalid): a poison record is rejected every time, any other never.  (Hypothesis found that an
event delivered once and then rejected on a re-send would leave its stray copy out of order; a
broker cannot do that without its limits changing under the relay.)"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay import ordering
from outbox_relay.model import Delivery, Message, OutboxRecord, SendResult

OUTCOMES = st.sampled_from(
    [Delivery.DELIVERED] * 6 + [Delivery.RETRY, Delivery.UNAVAILABLE, Delivery.NOT_SENT]
)


def encode(r: OutboxRecord) -> Message:
    return Message(r.id, "t", r.aggregate_id.encode(), b"{}", [])


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.tuples(st.sampled_from("ABCD"), st.integers(0, 9)), min_size=1, max_size=30),
    outcomes=st.lists(st.tuples(OUTCOMES, st.booleans()), min_size=200, max_size=200),
    limits=st.lists(st.integers(min_value=1, max_value=12), min_size=60, max_size=60),
)
def test_last_copies_stay_in_order_per_aggregate(
    keys: list[tuple[str, int]], outcomes: list[tuple[Delivery, bool]], limits: list[int]
) -> None:
    poison = {n + 1 for n, (_, roll) in enumerate(keys) if roll == 0}  # one in ten
    pending = {n + 1: key for n, (key, _) in enumerate(keys)}
    backoff: set[int] = set()
    published: set[int] = set()
    log: list[tuple[str, int]] = []  # (key, id) in broker order
    answers = iter(outcomes)
    for limit in limits:
        if not pending:
            break
        rows = [
            OutboxRecord(i, str(i), "t", k, "e", b"{}", None, None, None, 0, 0, i not in backoff)
            for i, k in sorted(pending.items())
        ]
        backoff.clear()
        selection = ordering.select(rows, set(), encode, limit)
        results = []
        for record, _ in selection.sendable:
            delivery, landed_anyway = next(answers, (Delivery.DELIVERED, False))
            if record.id in poison:
                delivery, landed_anyway = Delivery.REJECTED, False
            # A delivered record is in the log; a timed-out one may be there too (ambiguous).
            if delivery is Delivery.DELIVERED or (delivery is Delivery.UNAVAILABLE and landed_anyway):
                log.append((record.aggregate_id, record.id))
            results.append(SendResult(delivery, delivery.value))
        settled = ordering.settle([(r, res) for (r, _), res in zip(selection.sendable, results, strict=True)])
        for record in settled.published:
            published.add(record.id)
            del pending[record.id]
        for record, _ in settled.rejected:  # dead-lettered; later events of the key go on
            del pending[record.id]
        for record, _ in settled.retry:
            backoff.add(record.id)

    in_log = {i for _, i in log}
    assert published <= in_log, "only what Kafka holds is marked published"
    last: dict[int, int] = {}
    for position, (_, i) in enumerate(log):
        last[i] = position
    per_key: dict[str, list[int]] = defaultdict(list)
    for i, _position in sorted(last.items(), key=lambda item: item[1]):
        per_key[keys[i - 1][0]].append(i)
    for ids in per_key.values():
        assert ids == sorted(ids), f"last copies out of order: {ids}"
