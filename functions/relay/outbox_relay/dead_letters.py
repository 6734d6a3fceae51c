"""Sending dead letters within the run's deadline, and pausing while the queue is down.

The relay core hands each batch's letters to :meth:`DeadLetterDispatch.send`; it answers per
letter (``None``: acknowledged, the row may become DEAD; else why not, and the row backs off
without an attempt charged).  It knows nothing of SQS: it wraps any :class:`DeadLetterSink`.

One dispatch lives as long as the process (the runtime keeps it while warm), so a queue found
down is left alone for ``pause_seconds`` across invocations too: a stalled queue costs one
bounded wait per pause, not one per run.

A send cut off by the deadline is never sent twice by this process.  The letters the queue
acknowledged before the deadline count (their rows become DEAD); the others stay "being sent"
by the abandoned call, which goes on in its thread, or, in a frozen process, after the thaw (the
dispatch lives as long as the process, so it still remembers; a killed process's call never
lands).  When such a row comes back it is not sent again while that call may still land it:
acknowledged since, the row becomes DEAD without a new send; refused or failed, it is sent
anew; still running, the row backs off, uncharged.

Delivery stays at least once across processes: a row whose letter an abandoned call of a frozen
process still holds can be taken over by another process, which sends its own letter.  And a
DEAD mark lost with its finalize sends the letter again.  Both copies name the same
``outbox_id`` and ``event_id``, and redriving a row that is no longer DEAD changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeAlias, TypeVar

from .model import DeadLetter
from .ports import Clock, DeadLetterQueueDown, DeadLetterSink

log = logging.getLogger("outbox_relay")
T = TypeVar("T")

# After the queue did not answer (no answer by the deadline, or the sink reports it down), no
# letters are sent for this long: shorter than the schedule's minute, so the next scheduled run
# tries again.  A letter refused on its own (its content) pauses nothing.
DEAD_LETTER_PAUSE_SECONDS = 45.0
# A send is not started with less time than this left (the SQS client is built on the first
# letter, and one request takes a round trip): running out of time is not an outage to pause for.
MIN_SEND_SECONDS = 1.0
# A letter the queue acknowledged is not sent again for this long by this process (its row's DEAD
# mark failed with the database; the next runs mark it without a second letter).  Forgotten as
# soon as the DEAD mark commits: a row an operator redrives later gets a letter of its own.
LANDED_MEMORY_SECONDS = 600.0
# Letters acknowledged by an abandoned call whose rows have not come back (another process
# finalized them, say) are forgotten past this many, oldest first: memory stays bounded.
MAX_REMEMBERED = 10_000
STILL_SENDING = "still being sent by a call abandoned at an earlier deadline"

# ``runner(seconds, call)``: ``call()``'s result, or TimeoutError once ``seconds`` passed (the
# call may go on and finish later).  Default :func:`within`, a thread; a simulation runs the call
# at a step of its choosing.
SendRunner: TypeAlias = Callable[[float, Callable[[], list[str | None]]], list[str | None]]


class _Call:
    """One call of the sink: what it acknowledged so far, and its outcome once it returned."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = ids  # outbox ids, per letter
        self.acked: set[int] = set()
        self.done = False
        self.results: list[str | None] | None = None
        self.down: DeadLetterQueueDown | None = None
        self.abandoned = False


class DeadLetterDispatch:
    """A :class:`DeadLetterSink` bounded by a deadline, with a pause after an outage and a memory
    of the calls it stopped waiting for."""

    def __init__(
        self, sink: DeadLetterSink, pause_seconds: float | None = None, runner: SendRunner | None = None
    ) -> None:
        self.sink = sink
        self.pause_seconds = DEAD_LETTER_PAUSE_SECONDS if pause_seconds is None else pause_seconds
        self.runner: SendRunner = within if runner is None else runner
        self.down: str | None = None  # why the queue is paused, while it is
        self.retry_at = 0.0  # monotonic seconds
        # Outbox id -> the abandoned call holding its letter, while it may still land it (or
        # landed it and the row has not come back yet).  Guarded: calls finish in their threads.
        self._lock = threading.Lock()
        self._abandoned: dict[int, _Call] = {}
        # Outbox id -> until when: letters the queue acknowledged, whose rows the relay was told
        # may become DEAD.  If that finalize fails, the row comes back: it is not sent twice.
        self._acknowledged: OrderedDict[int, float] = OrderedDict()

    def send(self, letters: Sequence[DeadLetter], clock: Clock, deadline: float) -> list[str | None]:
        """The sink's answer per letter, waited for until ``deadline`` (monotonic seconds) at most."""
        answers: list[str | None] = [None] * len(letters)
        now = clock.monotonic()
        todo = [
            i
            for i, letter in enumerate(letters)
            if not self._settled(letter.record.id, answers, i) and not self._landed(letter.record.id, now)
        ]
        if not todo:
            return answers
        if self.down is not None and now < self.retry_at:
            return self._fill(answers, todo, f"paused after: {self.down}")
        seconds = deadline - now
        if seconds < MIN_SEND_SECONDS:
            return self._fill(
                answers, todo, f"no time left to send before the run's deadline ({seconds:.1f} s)"
            )
        batch = [letters[i] for i in todo]
        call = _Call([letter.record.id for letter in batch])
        down: str | None = None
        try:
            results = self.runner(seconds, lambda: self._run(call, batch))
        except TimeoutError:
            results, down = self._abandon(call, f"no answer within {seconds:.1f} s (the run's deadline)")
        except DeadLetterQueueDown as exc:
            down = str(exc)
            results = [None if ack is None else down for ack in exc.results]
        for i, result in zip(todo, results, strict=True):
            answers[i] = result
            if result is None:
                self._remember_landed(letters[i].record.id, clock.monotonic())
        self.down = down
        if down is not None:
            self.retry_at = clock.monotonic() + self.pause_seconds
            log.warning("dead-letter queue unavailable", extra={"error": down, "letters": len(batch)})
        return answers

    def _landed(self, record_id: int, now: float) -> bool:
        """Did the queue acknowledge this row's letter a moment ago?  Then the row's DEAD mark is
        what failed (a database error in the finalize), not the letter: it is not sent again."""
        until = self._acknowledged.get(record_id)
        return until is not None and now < until

    def _remember_landed(self, record_id: int, now: float) -> None:
        self._acknowledged[record_id] = now + LANDED_MEMORY_SECONDS
        self._acknowledged.move_to_end(record_id)
        while len(self._acknowledged) > MAX_REMEMBERED:
            self._acknowledged.popitem(last=False)

    def forget(self, record_ids: Sequence[int]) -> None:
        """These rows' DEAD marks committed: a row that comes back later (an operator redrove it
        and it failed again) needs a letter of its own."""
        for record_id in record_ids:
            self._acknowledged.pop(record_id, None)

    def abandoned(self) -> int:
        """How many letters abandoned calls hold (still running, or acknowledged and not yet
        answered to the relay)."""
        with self._lock:
            return len(self._abandoned)

    def _settled(self, record_id: int, answers: list[str | None], i: int) -> bool:
        """Answer a letter an abandoned call holds from that call's outcome; False when the letter
        is to be sent (no such call, or it ended without landing the letter)."""
        with self._lock:
            call = self._abandoned.get(record_id)
            if call is None:
                return False
            if record_id in call.acked:  # landed: the row may become DEAD, once
                del self._abandoned[record_id]
                answers[i] = None
                return True
            if call.done:
                del self._abandoned[record_id]
                return False
            answers[i] = STILL_SENDING
            return True

    @staticmethod
    def _fill(answers: list[str | None], todo: Sequence[int], why: str) -> list[str | None]:
        for i in todo:
            answers[i] = why
        return answers

    def _run(self, call: _Call, batch: Sequence[DeadLetter]) -> list[str | None]:
        """The sink's call (in the runner's thread), its progress and outcome kept in ``call``."""

        def acknowledged(k: int) -> None:
            with self._lock:
                call.acked.add(call.ids[k])

        try:
            results = self.sink.send(batch, acknowledged)
        except DeadLetterQueueDown as exc:
            self._finish(call, exc.results, exc)
            raise
        except BaseException:
            self._finish(call, ["failed"] * len(batch), None)
            raise
        self._finish(call, results, None)
        return results

    def _finish(self, call: _Call, results: Sequence[str | None], down: DeadLetterQueueDown | None) -> None:
        with self._lock:
            call.done, call.results, call.down = True, list(results), down
            call.acked.update(rid for rid, r in zip(call.ids, results, strict=False) if r is None)
            if call.abandoned:
                landed = sum(1 for rid in call.ids if rid in call.acked)
                log.warning(
                    "an abandoned dead-letter call ended",
                    extra={"letters": len(call.ids), "acknowledged": landed},
                )
                for rid in call.ids:  # what it did not land may be sent again
                    if rid not in call.acked and self._abandoned.get(rid) is call:
                        del self._abandoned[rid]

    def _abandon(self, call: _Call, why: str) -> tuple[list[str | None], str | None]:
        """Stop waiting for ``call``: its answers so far count, the rest it may still land.  The
        answers, and why the queue is to be paused (None if the call ended just in time)."""
        with self._lock:
            if call.done:  # it ended just as the wait did: its outcome stands
                if call.down is not None:
                    down = str(call.down)
                    return [None if r is None else down for r in call.down.results], down
                return list(call.results or []), None
            call.abandoned = True
            results: list[str | None] = []
            for rid in call.ids:
                if rid in call.acked:
                    results.append(None)
                else:
                    self._abandoned[rid] = call
                    results.append(why)
            self._forget_oldest_landed()
            return results, why

    def _forget_oldest_landed(self) -> None:
        """Past MAX_REMEMBERED, drop the oldest letters already landed (never a running call's:
        forgetting those would send them twice)."""
        excess = len(self._abandoned) - MAX_REMEMBERED
        if excess <= 0:
            return
        landed = [rid for rid, call in self._abandoned.items() if rid in call.acked]
        for rid in landed[:excess]:
            del self._abandoned[rid]


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, or :class:`TimeoutError` after ``seconds``.  The call runs in a daemon
    thread: a blocked socket cannot be interrupted, so on a timeout it finishes there on its own
    (its own bounds end it), and only what it reports on its way counts."""
    done: Future[T] = Future()

    def work() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            done.set_exception(exc)

    threading.Thread(target=work, name="outbox-bounded-call", daemon=True).start()
    return done.result(timeout=max(0.0, seconds))
