"""The rules that keep rows flowing, one clause per test: a row costs at most its own aggregate,
a missing topic is nobody's fault, a blocked aggregate is skipped in the read, a stalled
dead-letter queue pauses (across runs) instead of stalling every pass."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay import dead_letters, ordering
from outbox_relay.config import RelaySettings, check_topic_template
from outbox_relay.dead_letters import DeadLetterDispatch
from outbox_relay.messages import InvalidEvent, encode, legal_topic
from outbox_relay.model import DeadLetter, Delivery, Message, OutboxRecord, SendResult
from outbox_relay.ports import Acknowledged, DeadLetterQueueDown
from outbox_relay.shard_sweep import (
    EXPIRY_SLACK_SECONDS,
    Block,
    ShardSweep,
    advance,
    starved,
)
from tests.unit.kafka_fake import FakeClock

SETTINGS = RelaySettings()


def rec(id: int, agg: str = "A", shard: int = 0, **changes: object) -> OutboxRecord:
    base = OutboxRecord(id, str(id), "t", agg, "e", b"{}", None, None, None, 0, shard, True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# --- a row costs at most its own aggregate --------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"headers": '{"trace": "\\ud800"}'}, "is not valid unicode"),
        ({"headers": '{"\\udfff": "x"}'}, "a header name is not valid unicode"),
        ({"headers": "[" * 50_000 + "]" * 50_000}, "nested too deeply"),
        ({"payload": b"[" * 50_000 + b"]" * 50_000}, "nested too deeply"),
        ({"payload": b'{"a": 1' + b"\xff"}, "not valid JSON"),
        ({"topic": "__consumer_offsets"}, "not a legal Kafka topic name"),
    ],
)
def test_row_content_that_broke_encoding_is_an_invalid_event_with_a_reason(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        encode(dataclasses.replace(rec(1), **changes), SETTINGS)  # type: ignore[arg-type]


def test_an_unexpected_encoding_failure_dead_letters_the_row_and_the_pass_goes_on() -> None:
    def encoder(r: OutboxRecord) -> Message:
        if r.id == 2:
            raise KeyError("a bug, or content nobody foresaw")
        return Message(r.id, "t", r.aggregate_id.encode(), r.payload, [])

    rows = [rec(1, "A"), rec(2, "A"), rec(3, "A"), rec(4, "B")]
    selection = ordering.select(rows, set(), encoder)
    assert [r.id for r, _ in selection.sendable] == [1, 4]
    ((row, why),) = selection.invalid
    assert row.id == 2 and why.startswith("cannot encode the row: KeyError")


@settings(max_examples=300, deadline=None)
@given(
    headers=st.one_of(st.none(), st.text(), st.builds(json.dumps, st.dictionaries(st.text(), st.text()))),
    payload=st.binary(max_size=200),
    topic=st.one_of(st.none(), st.text(max_size=260)),
    aggregate=st.text(max_size=50),
)
def test_encode_raises_nothing_but_invalid_event_whatever_the_row_holds(
    headers: str | None, payload: bytes, topic: str | None, aggregate: str
) -> None:
    record = rec(
        1, aggregate_type=aggregate, aggregate_id=aggregate, headers=headers, payload=payload, topic=topic
    )
    try:
        message = encode(record, SETTINGS)
    except InvalidEvent:
        return
    # What it accepts, kafka-python can send: every header and the key encode as UTF-8.
    assert all(isinstance(v, bytes) for _, v in message.headers)
    for name, _ in message.headers:
        name.encode()


# --- topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["__consumer_offsets", "__transaction_state", "__cluster_metadata"])
def test_kafkas_internal_topics_are_not_legal(name: str) -> None:
    assert not legal_topic(name)


@pytest.mark.parametrize("name", ["__debezium-heartbeat.orders", "__amazon_msk_canary", "_private"])
def test_other_names_starting_with_underscores_are_ordinary_topics(name: str) -> None:
    assert legal_topic(name)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("orders events.{aggregate_type}", "outside the fields"),
        ("outbox/{aggregate_type}", "outside the fields"),
        ("__consumer_offsets", "not a legal Kafka topic name"),
        ("x" * 250 + "{event_type}", "Kafka allows 249"),
        ("..", "not a legal Kafka topic name"),
    ],
)
def test_the_topic_templates_literal_text_is_validated_in_full(template: str, problem: str) -> None:
    assert problem in (check_topic_template(template) or "")


@pytest.mark.parametrize(
    "template", ["outbox.event.{aggregate_type}", "{aggregate_type}-{event_type}", "orders"]
)
def test_good_topic_templates_pass(template: str) -> None:
    assert check_topic_template(template) is None


def test_a_missing_topic_backs_its_aggregate_off_uncharged_and_later_rows_wait() -> None:
    ok = SendResult(Delivery.DELIVERED)
    missing = SendResult(Delivery.TOPIC_UNAVAILABLE, "topic 'x' does not exist")
    settled = ordering.settle([(rec(1, "A"), missing), (rec(2, "A"), missing), (rec(3, "B"), ok)])
    assert [r.id for r, _ in settled.waiting] == [1]
    assert settled.retry == [] and [r.id for r in settled.published] == [3]


# --- skipping blocked aggregates ------------------------------------------------------------


def test_rows_left_by_the_pass_limit_are_deferred_not_blocked() -> None:
    rows = [rec(1, "A", shard=1), rec(2, "B", shard=2), rec(3, "C", shard=3)]
    selection = ordering.select(rows, set(), lambda r: Message(r.id, "t", b"", b"{}", []), limit=1)
    assert [r.id for r, _ in selection.sendable] == [1]
    assert selection.deferred == {2, 3}


BLOCK = Block("backing off", until=1e12, head=1)


def test_a_full_page_with_nothing_to_send_is_starved_and_read_by_heads() -> None:
    """Rows of known blocked aggregates, heads backing off and the rows behind them: nothing the
    head-of-line rule could send in a full page, so the shard is read by its due heads."""
    page = [rec(1, "A"), rec(2, "B", due=False), rec(3, "B"), rec(4, "A")]
    assert starved(page, [0], limit=4, blocked={("t", "A")}) == {0}


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from("ABCDE"), st.booleans(), st.integers(0, 1)), max_size=12),
    known=st.sets(st.sampled_from("ABCDE")),
    limit=st.integers(1, 12),
)
def test_a_shard_is_starved_exactly_when_its_page_is_full_and_the_selection_takes_nothing_of_it(
    rows: list[tuple[str, bool, int]], known: set[str], limit: int
) -> None:
    page = [rec(n, agg, shard=shard, due=due) for n, (agg, due, shard) in enumerate(rows, 1)]
    blocked = {("t", k) for k in known}
    selection = ordering.select(page, set(blocked), lambda r: Message(r.id, "t", b"", b"{}", []))
    selected = {r.shard for r, _ in selection.sendable}
    full = {s for s in (0, 1) if sum(r.shard == s for r in page) >= limit}
    assert starved(page, [0, 1], limit, blocked) == full - selected


def test_a_shard_that_sent_nothing_rests_and_one_that_sent_is_read_again() -> None:
    sweeps = {0: ShardSweep(), 1: ShardSweep()}
    advance({0: [rec(1)], 1: [rec(2, shard=1)]}, sweeps, progress={1})
    assert sweeps[0].idle and not sweeps[1].idle


def test_a_block_ends_when_its_head_is_due_and_the_shard_is_read_again() -> None:
    sweep = ShardSweep(idle=True, by_heads=True)
    sweep.block(("t", "A"), "backing off", until=10.0, head=25)
    sweep.block(("t", "B"), "topic missing", until=99.0, head=7)
    sweep.expire(10.0)  # the slack: not before the database's due time
    assert set(sweep.blocked) == {("t", "A"), ("t", "B")} and sweep.idle
    sweep.expire(10.0 + EXPIRY_SLACK_SECONDS)
    assert set(sweep.blocked) == {("t", "B")} and not sweep.idle and sweep.by_heads


def test_a_row_too_heavy_for_what_other_rows_leave_of_the_budget_is_marked_to_go_first() -> None:
    rows = [rec(1, "A", shard=0), rec(2, "B", shard=1, payload=b"x" * 900), rec(3, "C", shard=2)]
    selection = ordering.select(rows, set(), lambda r: Message(r.id, "t", b"", b"{}", []), byte_budget=500)
    assert [r.id for r, _ in selection.sendable] == [1, 3] and selection.heavy == {("t", "B")}
    # First in the next pass, it goes (a pass takes at least one row, whatever its weight).
    again = ordering.select(
        [rows[1], rows[0], rows[2]], set(), lambda r: Message(r.id, "t", b"", b"{}", []), byte_budget=100
    )
    assert [r.id for r, _ in again.sendable] == [2] and again.heavy == {("t", "A"), ("t", "C")}


def test_an_unloaded_row_is_not_judged_on_its_topic_before_its_body_is_loaded() -> None:
    from outbox_relay.messages import BodyNotLoaded

    unloaded = rec(1, topic="bad topic", payload=b"", payload_size=30_000, loaded=False)
    with pytest.raises(BodyNotLoaded):
        encode(unloaded, SETTINGS)


# --- the dead-letter queue ------------------------------------------------------------------


class Sink:
    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls = 0
        self.release = threading.Event()

    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        self.calls += 1
        if self.answer == "down":
            raise DeadLetterQueueDown("AccessDenied", ["not sent"] * len(letters))
        if self.answer == "stall":
            self.release.wait(5)
            return [None] * len(letters)
        if self.answer == "refuse":
            return ["InvalidMessageContents: bad"] * len(letters)
        return [None] * len(letters)


LETTERS = [DeadLetter(rec(1), "bad", None), DeadLetter(rec(2, "B"), "bad", None)]


def test_a_queue_that_is_down_pauses_dead_letters_across_runs_then_is_tried_again() -> None:
    clock, sink = FakeClock(), Sink("down")
    dispatch = DeadLetterDispatch(sink, pause_seconds=45)
    assert dispatch.send(LETTERS, clock, clock.now + 10) == ["AccessDenied", "AccessDenied"]
    clock.now += 44  # a later run of the same warm process
    assert dispatch.send(LETTERS, clock, clock.now + 10) == ["paused after: AccessDenied"] * 2
    assert sink.calls == 1
    sink.answer = "ok"
    clock.now += 2
    assert dispatch.send(LETTERS, clock, clock.now + 10) == [None, None]
    assert sink.calls == 2 and dispatch.down is None


def test_letters_refused_one_by_one_pause_nothing() -> None:
    clock, sink = FakeClock(), Sink("refuse")
    dispatch = DeadLetterDispatch(sink)
    dispatch.send(LETTERS, clock, clock.now + 10)
    dispatch.send(LETTERS, clock, clock.now + 10)
    assert sink.calls == 2 and dispatch.down is None


def test_with_too_little_time_left_no_letter_is_sent_and_nothing_pauses() -> None:
    clock, sink = FakeClock(), Sink("ok")
    dispatch = DeadLetterDispatch(sink)
    acks = dispatch.send(LETTERS, clock, clock.now + dead_letters.MIN_SEND_SECONDS / 2)
    assert sink.calls == 0 and dispatch.down is None
    assert all(a is not None and "no time left" in a for a in acks)


def test_a_stalled_queue_is_waited_for_until_the_deadline_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(dead_letters, "MIN_SEND_SECONDS", 0.1)
    sink = Sink("stall")
    dispatch = DeadLetterDispatch(sink)
    started = time.monotonic()

    class Clock:
        def monotonic(self) -> float:
            return time.monotonic()

        def sleep(self, seconds: float) -> None:
            time.sleep(seconds)

    try:
        acks = dispatch.send(LETTERS, Clock(), started + 0.3)
    finally:
        sink.release.set()
    assert time.monotonic() - started < 1.0
    assert all(a is not None and "no answer within" in a for a in acks)
    assert dispatch.down is not None
