"""The simulated dead-letter queue: an SQS client with ``send_message_batch``, as boto3's.

It applies SQS's documented rules to each body (tests/sqs_rules.py: XML characters, the queue's
maximum size) and the faults of a seed: per-entry failures, a call refused as a whole, a stalled
call (bounded by the client's timeouts, as aws_clients.SQS configures them), and an answer lost on
the way back after SQS stored the messages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, ReadTimeoutError

from tests.sqs_rules import sqs_refusal

from .world import World

# aws_clients.SQS: connect 2 s, read 3 s, 2 attempts in all (standard retry mode).
CALL_BOUND_SECONDS = 2 * (2 + 3)


@dataclass
class SqsFaults:
    outages: list[tuple[float, float]] = field(default_factory=list)  # calls stall, then fail
    entry_failure: float = 0.0  # one entry fails (ServiceUnavailable, not the sender's fault)
    lost_answer: float = 0.0  # stored, but the answer never arrives (a read timeout)


@dataclass(frozen=True)
class Letter:
    outbox_id: int
    event_id: str
    body: dict[str, Any]
    at: float
    process: str  # who sent it


class Queue:
    def __init__(self, world: World, max_bytes: int = 262_144) -> None:
        self.world = world
        self.max_bytes = max_bytes
        self.letters: list[Letter] = []
        # (process, event id) -> when that process first tried to dead-letter the event.
        self.tried: dict[tuple[str, str], float] = {}
        self.outbox_ids: set[int] = set()
        self.faults = SqsFaults()
        self.quiet = False

    def down(self) -> bool:
        now = self.world.now
        return not self.quiet and any(a <= now < b for a, b in self.faults.outages)

    def noisy(self, rate: float) -> bool:
        return not self.quiet and rate > 0 and self.world.rng.random() < rate


class SimSqsClient:
    """What SqsDeadLetterSink calls of boto3's SQS client."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def send_message_batch(self, QueueUrl: str, Entries: Sequence[dict[str, str]]) -> dict[str, Any]:
        queue, world = self.queue, self.queue.world
        world.check()
        sender = world.current.process.name if world.current is not None else "?"
        for entry in Entries:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                event = str(json.loads(entry["MessageBody"]).get("event_id"))
                queue.tried.setdefault((sender, event), world.now)
        world.pause(world.rng.uniform(0.005, 0.03))
        if queue.down():
            world.pause(CALL_BOUND_SECONDS)
            raise ReadTimeoutError(endpoint_url=QueueUrl)
        successful, failed = [], []
        for entry in Entries:
            body = entry["MessageBody"]
            refusal = sqs_refusal(body, queue.max_bytes)
            if refusal is not None:
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": True,
                        "Code": "InvalidMessageContents",
                        "Message": refusal,
                    }
                )
                continue
            if queue.noisy(queue.faults.entry_failure):
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": False,
                        "Code": "ServiceUnavailable",
                        "Message": "try again",
                    }
                )
                continue
            parsed = json.loads(body)
            queue.letters.append(
                Letter(int(parsed["outbox_id"]), str(parsed.get("event_id")), parsed, world.now, sender)
            )
            queue.outbox_ids.add(int(parsed["outbox_id"]))
            successful.append({"Id": entry["Id"], "MessageId": f"m{len(queue.letters)}"})
        world.pause(world.rng.uniform(0.005, 0.03))
        if queue.noisy(queue.faults.lost_answer):
            world.pause(CALL_BOUND_SECONDS)
            raise ClientError(
                {"Error": {"Code": "RequestTimeout", "Message": "no answer"}}, "SendMessageBatch"
            )
        return {"Successful": successful, "Failed": failed}
