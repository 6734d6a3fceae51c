"""Sending dead letters within the run's deadline, and pausing while the queue is down.

The relay core hands each batch's letters to :meth:`DeadLetterDispatch.send`; it answers per
letter (``None``: acknowledged, the row may become DEAD; else why not, and the row backs off
without an attempt charged).  It knows nothing of SQS: it wraps any :class:`DeadLetterSink`.

One dispatch lives as long as the process (the runtime keeps it while warm), so a queue found
down is left alone for ``pause_seconds`` across invocations too: a stalled queue costs one
bounded wait per pause, not one per run.

Delivery is at least once.  A send cut off by the deadline may still land after the relay gave
up on it; the row then stays PENDING and is dead-lettered again later, so the queue can hold two
copies of one letter.  Both name the same ``outbox_id`` and ``event_id``, and redriving a row
that is no longer DEAD changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import TypeVar

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


class DeadLetterDispatch:
    """A :class:`DeadLetterSink` bounded by a deadline, with a pause after an outage."""

    def __init__(self, sink: DeadLetterSink, pause_seconds: float | None = None) -> None:
        self.sink = sink
        self.pause_seconds = DEAD_LETTER_PAUSE_SECONDS if pause_seconds is None else pause_seconds
        self.down: str | None = None  # why the queue is paused, while it is
        self.retry_at = 0.0  # monotonic seconds

    def send(self, letters: Sequence[DeadLetter], clock: Clock, deadline: float) -> list[str | None]:
        """The sink's answer per letter, waited for until ``deadline`` (monotonic seconds) at most."""
        now = clock.monotonic()
        if self.down is not None and now < self.retry_at:
            return [f"paused after: {self.down}"] * len(letters)
        seconds = deadline - now
        if seconds < MIN_SEND_SECONDS:
            return [f"no time left to send before the run's deadline ({seconds:.1f} s)"] * len(letters)
        down: str | None = None
        try:
            acks = within(seconds, partial(self.sink.send, letters))
        except TimeoutError:
            down = f"no answer within {seconds:.1f} s (the run's deadline)"
            acks = [down] * len(letters)
        except DeadLetterQueueDown as exc:
            down = str(exc)
            acks = [None if ack is None else down for ack in exc.results]
        self.down = down
        if down is not None:
            self.retry_at = clock.monotonic() + self.pause_seconds
            log.warning("dead-letter queue unavailable", extra={"error": down, "letters": len(letters)})
        return acks


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, or :class:`TimeoutError` after ``seconds``.  The call runs in a daemon
    thread: a blocked socket cannot be interrupted, so on a timeout it finishes there on its own
    (its own bounds end it) and its answer is dropped; the rows it concerned stay PENDING."""
    done: Future[T] = Future()

    def work() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            done.set_exception(exc)

    threading.Thread(target=work, name="outbox-dead-letters", daemon=True).start()
    return done.result(timeout=max(0.0, seconds))
