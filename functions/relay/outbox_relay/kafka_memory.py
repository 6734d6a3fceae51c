"""What a warm process remembers of Kafka's refusals, so that it does not ask again too soon.

* A topic found missing or denied: ``send()`` would block for its metadata, or a produce would
  put the producer in its fatal state again.  Remembered ``TOPIC_MEMORY_SECONDS`` (its rows wait
  as long, ``relay.TOPIC_WAIT_SECONDS``); a topic created meanwhile is used within that time.
* A record Kafka rejected (too large, invalid): sending it again would put the producer in its
  fatal state again while its letter waits for the dead-letter queue.  Remembered
  ``REJECTED_MEMORY_SECONDS``, at most ``REJECTED_MEMORY_SIZE`` records (the oldest forgotten).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .model import Delivery, Message, SendResult
from .ports import Clock

log = logging.getLogger("outbox_relay")

TOPIC_MEMORY_SECONDS = 30.0
REJECTED_MEMORY_SECONDS = 900.0
REJECTED_MEMORY_SIZE = 1000

Identity = tuple[int, str, int]  # (outbox id, topic, value size): the record as it was sent


class Refusals:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._topic_down: dict[str, tuple[str, float]] = {}  # topic -> (why, until)
        self._rejected: OrderedDict[Identity, tuple[str, float]] = OrderedDict()

    def known(self, message: Message) -> SendResult | None:
        """The record's result without a send, while its topic or the record is remembered."""
        now = self._clock.monotonic()
        down = self._topic_down.get(message.topic)
        if down is not None and down[1] > now:
            return SendResult(Delivery.TOPIC_UNAVAILABLE, down[0])
        rejected = self._rejected.get(_identity(message))
        if rejected is not None and rejected[1] > now:
            return SendResult(Delivery.REJECTED, rejected[0])
        return None

    def topic_unavailable(self, topic: str, error: str) -> SendResult:
        self._topic_down[topic] = (error, self._clock.monotonic() + TOPIC_MEMORY_SECONDS)
        log.warning("topic unavailable", extra={"topic": topic, "error": error})
        return SendResult(Delivery.TOPIC_UNAVAILABLE, error)

    def reject(self, message: Message, error: str) -> SendResult:
        self._rejected[_identity(message)] = (error, self._clock.monotonic() + REJECTED_MEMORY_SECONDS)
        while len(self._rejected) > REJECTED_MEMORY_SIZE:
            self._rejected.popitem(last=False)
        return SendResult(Delivery.REJECTED, error)

    def expire(self) -> None:
        """Forget what is past its time (once per run)."""
        now = self._clock.monotonic()
        self._topic_down = {t: down for t, down in self._topic_down.items() if down[1] > now}
        for record, (_, until) in list(self._rejected.items()):
            if until <= now:
                del self._rejected[record]


def _identity(message: Message) -> Identity:
    return (message.record_id, message.topic, len(message.value))
