"""Guarantee: a dead-letter send abandoned at the deadline is never sent twice by the process.

What the queue acknowledged before the deadline counts (those rows become DEAD); what the
abandoned call still holds is not sent again while it may land: its outcome decides.  The calls
are driven by a runner of the test's own (the seam a deterministic simulation uses): it stops
waiting when the sink reaches a chosen letter, and resumes the call later, as a thaw would."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay import dead_letters
from outbox_relay.dead_letters import STILL_SENDING, DeadLetterDispatch
from outbox_relay.model import DeadLetter, OutboxRecord
from outbox_relay.ports import Acknowledged, DeadLetterQueueDown
from tests.unit.kafka_fake import FakeClock


def letter(n: int) -> DeadLetter:
    record = OutboxRecord(n, f"e{n}", "t", f"a{n}", "e", b"{}", None, None, None, 0, 0, True)
    return DeadLetter(record, "bad", None)


class FixedClock:
    def monotonic(self) -> float:
        return 100.0

    def sleep(self, seconds: float) -> None:
        pass


@dataclasses.dataclass
class Plan:
    """How the next sink call goes: ``refuse`` ids are answered with a refusal, the rest acked;
    with ``freeze_at``, the runner stops waiting when the call reaches that letter (the letters
    before it were answered); with ``down_at``, the queue fails as a whole at that letter."""

    refuse: frozenset[int] = frozenset()
    freeze_at: int | None = None
    down_at: int | None = None
    ended_in_time: bool = False  # the call ends just as the wait does
    reached: threading.Event = dataclasses.field(default_factory=threading.Event)
    resume: threading.Event = dataclasses.field(default_factory=threading.Event)


class SteppedSink:
    """A queue that records what landed and fails the test on a second send of a letter that an
    earlier call still holds or already landed."""

    def __init__(self) -> None:
        self.plan = Plan()
        self.in_flight: Counter[int] = Counter()
        self.landed: Counter[int] = Counter()
        self.calls: list[list[int]] = []

    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        plan, ids = self.plan, [x.record.id for x in letters]
        self.calls.append(ids)
        for rid in ids:
            assert not self.in_flight[rid], f"letter {rid} sent while an abandoned call still holds it"
            assert not self.landed[rid], f"letter {rid} sent again after it landed"
        self.in_flight.update(ids)
        results: list[str | None] = ["not sent"] * len(ids)
        try:
            for k, rid in enumerate(ids):
                if k == plan.freeze_at:
                    plan.reached.set()
                    assert plan.resume.wait(5)
                if k == plan.down_at:
                    raise DeadLetterQueueDown("Throttled", results)
                if rid in plan.refuse:
                    results[k] = "InvalidMessageContents"
                else:
                    self.landed[rid] += 1
                    results[k] = None
                    if acknowledged is not None:
                        acknowledged(k)
            return results
        finally:
            self.in_flight.subtract(ids)


class SteppedRunner:
    """Runs each call in a thread it holds: it waits until the call ends, or until the call
    reaches the plan's ``freeze_at`` (then it reports the deadline); :meth:`thaw` lets a frozen
    call go on."""

    def __init__(self, sink: SteppedSink) -> None:
        self.sink = sink
        self.frozen: list[tuple[Plan, threading.Thread]] = []

    def __call__(self, seconds: float, call: Callable[[], list[str | None]]) -> list[str | None]:
        plan = self.sink.plan
        if plan.freeze_at is None:
            results = call()
            if plan.ended_in_time:
                raise TimeoutError
            return results

        def run() -> None:
            with contextlib.suppress(DeadLetterQueueDown):
                call()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert plan.reached.wait(5)
        self.frozen.append((plan, thread))
        raise TimeoutError

    def thaw(self, n: int = 0) -> None:
        plan, thread = self.frozen.pop(n)
        plan.resume.set()
        thread.join(5)
        assert not thread.is_alive()


def dispatch_over() -> tuple[DeadLetterDispatch, SteppedSink, SteppedRunner]:
    sink = SteppedSink()
    runner = SteppedRunner(sink)
    return DeadLetterDispatch(sink, pause_seconds=0, runner=runner), sink, runner


def send(dispatch: DeadLetterDispatch, ids: Sequence[int]) -> dict[int, str | None]:
    answers = dispatch.send([letter(n) for n in ids], FixedClock(), 110.0)
    return dict(zip(ids, answers, strict=True))


def test_letters_acknowledged_before_the_deadline_count_and_the_rest_are_not_sent_again() -> None:
    dispatch, sink, runner = dispatch_over()
    sink.plan = Plan(freeze_at=1, refuse=frozenset({3}))  # once thawed it lands 2; 3 is refused
    first = send(dispatch, [1, 2, 3])
    assert first[1] is None, "acknowledged before the deadline: the row becomes DEAD"
    assert first[2] and first[3] and "no answer within" in first[2]
    assert dispatch.abandoned() == 2

    sink.plan = Plan()
    again = send(dispatch, [2, 3, 4])  # a later run: rows 2 and 3 come back, 4 is new
    assert again == {2: STILL_SENDING, 3: STILL_SENDING, 4: None}
    assert sink.calls[-1] == [4], "only the new letter was sent"

    runner.thaw()
    assert dispatch.abandoned() == 1, "what the call did not land is forgotten"
    calls = len(sink.calls)
    sink.plan = Plan()
    assert send(dispatch, [2, 3]) == {2: None, 3: None}
    assert sink.calls[calls:] == [[3]], "2 landed by the abandoned call: DEAD without a new send"
    assert dispatch.abandoned() == 0


def test_a_call_that_ends_just_as_the_wait_does_is_taken_as_answered() -> None:
    dispatch, sink, _ = dispatch_over()
    sink.plan = Plan(refuse=frozenset({2}), ended_in_time=True)
    assert send(dispatch, [1, 2]) == {1: None, 2: "InvalidMessageContents"}
    assert dispatch.down is None and dispatch.abandoned() == 0


def test_a_frozen_call_that_fails_as_a_whole_lets_its_letters_be_sent_again() -> None:
    dispatch, sink, runner = dispatch_over()
    sink.plan = Plan(freeze_at=0, down_at=1)  # once thawed: 1 lands, then the queue fails
    assert all(a is not None for a in send(dispatch, [1, 2]).values())
    runner.thaw()
    sink.plan = Plan()
    assert send(dispatch, [1, 2]) == {1: None, 2: None}
    assert sink.calls[-1] == [2]


def test_the_default_runner_keeps_what_landed_before_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread-based runner: a send stalled after its first letter, cut by the deadline."""
    import time

    from outbox_relay.ports import SystemClock

    monkeypatch.setattr(dead_letters, "MIN_SEND_SECONDS", 0.1)
    sink = SteppedSink()
    sink.plan = Plan(freeze_at=1)
    dispatch = DeadLetterDispatch(sink, pause_seconds=0)
    answers = dispatch.send([letter(1), letter(2)], SystemClock(), time.monotonic() + 0.3)
    assert answers[0] is None and answers[1] is not None
    assert dispatch.send([letter(2)], SystemClock(), time.monotonic() + 5) == [STILL_SENDING]
    sink.plan.resume.set()
    assert _eventually(lambda: dispatch.abandoned() == 1 and sink.landed[2] == 1)
    assert dispatch.send([letter(2)], SystemClock(), time.monotonic() + 5) == [None]
    assert sink.calls == [[1, 2]]


def _eventually(predicate: Callable[[], bool]) -> bool:
    import time

    end = time.monotonic() + 5
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_memory_of_landed_letters_is_bounded_and_never_forgets_a_running_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dead_letters, "MAX_REMEMBERED", 3)
    dispatch, sink, runner = dispatch_over()
    sink.plan = Plan(freeze_at=0)
    send(dispatch, [1, 2])
    runner.thaw()  # lands 1 and 2: remembered until they come back
    sink.plan = Plan(freeze_at=0)
    send(dispatch, [3, 4])  # running: 3 and 4 held; 4 remembered ids > 3: the oldest landed goes
    assert dispatch.abandoned() == 3
    sink.plan = Plan()
    assert send(dispatch, [3, 4]) == {3: STILL_SENDING, 4: STILL_SENDING}
    runner.thaw()


# --- the family: any interleaving of sends, deadlines, thaws and refusals ------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_no_letter_is_sent_twice_and_dead_only_after_it_landed(data: st.DataObject) -> None:
    dispatch, sink, runner = dispatch_over()
    pending = set(range(1, 7))  # rows still PENDING (a row answered None becomes DEAD)
    for _ in range(data.draw(st.integers(1, 12))):
        if len(runner.frozen) > 0 and data.draw(st.booleans()):
            runner.thaw(data.draw(st.integers(0, len(runner.frozen) - 1)))
            continue
        if not pending:
            break
        ids = data.draw(st.lists(st.sampled_from(sorted(pending)), min_size=1, max_size=4, unique=True))
        sends = [n for n in ids if n not in _held(dispatch)]
        mode = data.draw(st.sampled_from(["answered", "freeze", "down", "in_time"]))
        at = data.draw(st.integers(0, max(0, len(sends) - 1)))
        refuse = data.draw(st.frozensets(st.sampled_from(ids)))
        sink.plan = Plan(
            refuse=refuse,
            freeze_at=at if mode == "freeze" and sends else None,
            down_at=at if mode == "down" else None,
            ended_in_time=mode == "in_time",
        )
        for n, answer in send(dispatch, ids).items():
            if answer is None:
                assert sink.landed[n] == 1, f"row {n} DEAD without its letter acknowledged"
                pending.discard(n)
    while runner.frozen:  # every frozen call thaws: then every row can be dead-lettered
        runner.thaw()
    sink.plan = Plan()
    if pending:
        assert set(send(dispatch, sorted(pending)).values()) == {None}
    assert all(count == 1 for count in sink.landed.values())


def _held(dispatch: DeadLetterDispatch) -> set[int]:
    return set(dispatch._abandoned)  # which ids the dispatch will not send


def test_a_letter_acknowledged_whose_dead_mark_failed_is_not_sent_again() -> None:
    """Found by the simulation (tests/sim): the queue acknowledged a letter, the finalize that
    marks its row DEAD failed with the database, the row came back in the next run of the warm
    process: answered as acknowledged, with no second letter.  Once the memory has passed, a row
    that comes back (redriven, failed again) gets a letter of its own."""
    calls: list[list[int]] = []

    class Sink:
        def send(
            self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
        ) -> list[str | None]:
            calls.append([x.record.id for x in letters])
            return [None] * len(letters)

    clock = FakeClock()
    dispatch = DeadLetterDispatch(Sink(), runner=lambda seconds, call: call())
    assert dispatch.send([letter(1), letter(2)], clock, clock.now + 30) == [None, None]
    assert dispatch.send([letter(2), letter(3)], clock, clock.now + 30) == [None, None]
    assert calls == [[1, 2], [3]], "row 2's letter was acknowledged: it is not sent twice"
    clock.now += dead_letters.LANDED_MEMORY_SECONDS + 1
    assert dispatch.send([letter(2)], clock, clock.now + 30) == [None]
    assert calls[-1] == [2]
    # Once the row's DEAD mark committed, it is forgotten at once: redriven and failed again
    # (the queue's letter deleted by the redrive), it gets a letter of its own.
    dispatch.forget([2])
    assert dispatch.send([letter(2)], clock, clock.now + 30) == [None]
    assert calls[-1] == [2] and len(calls) == 4
