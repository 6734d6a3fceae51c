"""Per-aggregate ordering rules (head-of-line, contiguous prefix), by example and by property."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay import ordering
from outbox_relay.messages import InvalidEvent
from outbox_relay.model import Delivery, Message, OutboxRecord, SendResult


def rec(id: int, agg: str, due: bool = True, valid: bool = True) -> OutboxRecord:
    return OutboxRecord(
        id=id,
        event_id=str(id),
        aggregate_type="t",
        aggregate_id=agg,
        event_type="e",
        payload=b"{}" if valid else b"bad",
        topic=None,
        headers=None,
        seq=None,
        attempts=0,
        shard=0,
        due=due,
    )


def encode(r: OutboxRecord) -> Message:
    if r.payload == b"bad":
        raise InvalidEvent("bad")
    return Message(r.id, "t", r.aggregate_id.encode(), r.payload, [])


def test_a_row_in_backoff_blocks_only_its_own_aggregate() -> None:
    rows = [rec(1, "A", due=False), rec(2, "B"), rec(3, "A"), rec(4, "B")]
    selection = ordering.select(rows, set(), encode)
    assert [r.id for r, _ in selection.sendable] == [2, 4]


def test_an_invalid_row_is_dead_lettered_and_ends_its_aggregate_for_this_pass() -> None:
    rows = [rec(1, "A"), rec(2, "A", valid=False), rec(3, "A"), rec(4, "B")]
    selection = ordering.select(rows, set(), encode)
    assert [r.id for r, _ in selection.sendable] == [1, 4]
    assert [(r.id, why) for r, why in selection.invalid] == [(2, "bad")]


def test_limit_keeps_each_aggregate_a_prefix() -> None:
    rows = [rec(1, "A"), rec(2, "B"), rec(3, "A"), rec(4, "C")]
    selection = ordering.select(rows, set(), encode, limit=2)
    assert [r.id for r, _ in selection.sendable] == [1, 2]


def test_contiguous_prefix_marks_up_to_the_first_failure_and_charges_only_it() -> None:
    ok, retry = SendResult(Delivery.DELIVERED), SendResult(Delivery.RETRY, "unknown topic")
    sent = [(rec(1, "A"), ok), (rec(2, "A"), retry), (rec(3, "A"), ok), (rec(4, "B"), ok)]
    settled = ordering.settle(sent)
    assert [r.id for r in settled.published] == [1, 4]
    assert [(r.id, e) for r, e in settled.retry] == [(2, "unknown topic")]
    assert settled.rejected == [] and settled.unavailable is None


def test_an_outage_charges_nobody_and_is_reported() -> None:
    down = SendResult(Delivery.UNAVAILABLE, "broker down")
    settled = ordering.settle(
        [(rec(1, "A"), SendResult(Delivery.DELIVERED)), (rec(2, "A"), down), (rec(3, "B"), down)]
    )
    assert [r.id for r in settled.published] == [1]
    assert settled.retry == [] and settled.rejected == [] and settled.unavailable == "broker down"


ROWS = st.lists(
    st.tuples(st.sampled_from("ABCD"), st.booleans(), st.booleans()), min_size=0, max_size=40
).map(lambda items: [rec(i + 1, agg, due=due, valid=valid) for i, (agg, due, valid) in enumerate(items)])


@given(ROWS, st.frozensets(st.sampled_from("ABCD")), st.none() | st.integers(min_value=0, max_value=40))
def test_select_never_lets_a_row_overtake_an_earlier_pending_row_of_its_aggregate(
    rows: list[OutboxRecord], blocked_aggs: frozenset[str], limit: int | None
) -> None:
    blocked = {("t", a) for a in blocked_aggs}
    selection = ordering.select(rows, set(blocked), encode, limit)
    chosen = {r.id for r, _ in selection.sendable} | {r.id for r, _ in selection.invalid}
    by_agg: dict[str, list[OutboxRecord]] = defaultdict(list)
    for r in rows:
        by_agg[r.aggregate_id].append(r)
    for agg, agg_rows in by_agg.items():
        taken = [r.id in chosen for r in agg_rows]
        # What is taken of an aggregate is a prefix of its rows ...
        assert taken == sorted(taken, reverse=True)
        # ... that is empty when the aggregate was already blocked, holds only due rows, and
        # ends at the first invalid row.
        prefix = [r for r in agg_rows if r.id in chosen]
        if ("t", agg) in blocked:
            assert prefix == []
        assert all(r.due for r in prefix)
        assert all(r.payload != b"bad" for r in prefix[:-1])
    if limit is not None:
        assert len(chosen) <= limit


DELIVERIES = st.sampled_from(list(Delivery))


@given(st.lists(st.tuples(st.sampled_from("ABC"), DELIVERIES), max_size=40))
def test_settle_marks_only_acknowledged_prefixes_and_charges_at_most_one_row_per_aggregate(
    outcomes: list[tuple[str, Delivery]],
) -> None:
    sent = [(rec(i + 1, agg), SendResult(d, d.value)) for i, (agg, d) in enumerate(outcomes)]
    settled = ordering.settle(sent)
    published = {r.id for r in settled.published}
    charged = [r for r, _ in settled.retry] + [r for r, _ in settled.rejected]
    for agg in "ABC":
        mine = [(r, res) for r, res in sent if r.aggregate_id == agg]
        first_bad = next(
            (i for i, (_, res) in enumerate(mine) if res.delivery is not Delivery.DELIVERED), len(mine)
        )
        assert {r.id for r, _ in mine[:first_bad]} == {r.id for r, _ in mine} & published
        mine_charged = [r for r in charged if r.aggregate_id == agg]
        assert len(mine_charged) <= 1
        if mine_charged:
            assert mine_charged[0].id == mine[first_bad][0].id
    assert (settled.unavailable is not None) == any(d is Delivery.UNAVAILABLE for _, d in outcomes)
    assert all(dataclasses.is_dataclass(r) for r in settled.published)
