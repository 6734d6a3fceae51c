"""The dead-letter queue on Amazon SQS: the event and the reason, acknowledged per message."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .model import DeadLetter

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# SQS's classic limit; a queue configured for up to 1 MiB can raise it (DLQ_MAX_MESSAGE_BYTES).
DEFAULT_MAX_MESSAGE_BYTES = 262_144
_BATCH = 10


def dead_letter_body(letter: DeadLetter, max_bytes: int) -> str:
    """The JSON message: enough to understand and redrive the event; the payload if it fits."""
    record = letter.record
    body: dict[str, Any] = {
        "outbox_id": record.id,
        "event_id": record.event_id,
        "aggregate_type": record.aggregate_type,
        "aggregate_id": record.aggregate_id,
        "event_type": record.event_type,
        "topic": letter.topic,
        "attempts": record.attempts,
        "reason": letter.reason,
        "headers": record.headers,
        "seq": record.seq,
        "payload_bytes": len(record.payload),
    }
    try:
        body["payload"] = record.payload.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_base64"] = base64.b64encode(record.payload).decode("ascii")
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) <= max_bytes:
        return text
    body.pop("payload", None)
    body.pop("payload_base64", None)
    body["payload_omitted"] = "too large for the queue; the DEAD row keeps it"
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class SqsDeadLetterSink:
    """:class:`~outbox_relay.ports.DeadLetterSink` on one SQS queue (``DLQ_QUEUE_URL``)."""

    def __init__(
        self,
        client: SQSClient | Callable[[], SQSClient],
        queue_url: str,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        # A factory defers building the boto3 client (~0.1 s of a cold start) to the first dead
        # letter: most runs never send one.
        self._factory: Callable[[], SQSClient] = client if callable(client) else lambda: client
        self.queue_url = queue_url
        self.max_bytes = max_bytes

    @functools.cached_property
    def client(self) -> SQSClient:
        return self._factory()

    def send(self, letters: Sequence[DeadLetter]) -> list[str | None]:
        """Blocks for at most one bounded call per batch of 10 (``aws_clients.SQS``); after a
        call that failed as a whole, the later batches are not tried (they would wait alike)."""
        bodies = [dead_letter_body(letter, self.max_bytes) for letter in letters]
        results: list[str | None] = ["not sent"] * len(letters)
        batches = self._batches(bodies)
        for n, batch in enumerate(batches):
            entries = [{"Id": str(i), "MessageBody": bodies[i]} for i in batch]
            try:
                response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
            except (BotoCoreError, ClientError) as exc:
                error = " ".join(str(exc).split())[:300]
                for i in (i for later in batches[n:] for i in later):
                    results[i] = error
                break
            for ok in response.get("Successful", []):
                results[int(ok["Id"])] = None
            for failed in response.get("Failed", []):
                results[int(failed["Id"])] = f"{failed.get('Code')}: {failed.get('Message', '')}"[:300]
        return results

    def receive(self, max_messages: int, visibility_timeout: int = 120) -> list[tuple[str, dict[str, Any]]]:
        """Read (without deleting) up to ``max_messages`` dead letters: (receipt handle, body)."""
        out: list[tuple[str, dict[str, Any]]] = []
        while len(out) < max_messages:
            got = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, max_messages - len(out)),
                VisibilityTimeout=visibility_timeout,
                WaitTimeSeconds=0,
            )
            messages = got.get("Messages", [])
            if not messages:
                break
            for m in messages:
                try:
                    body = json.loads(m.get("Body", ""))
                except ValueError:
                    body = {}
                out.append((m["ReceiptHandle"], body if isinstance(body, dict) else {}))
        return out

    def delete(self, receipts: Sequence[str]) -> None:
        for start in range(0, len(receipts), _BATCH):
            chunk = receipts[start : start + _BATCH]
            self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)],
            )

    def _batches(self, bodies: list[str]) -> list[list[int]]:
        """Groups of ≤ 10 messages whose total stays within the queue's request limit."""
        out: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i, body in enumerate(bodies):
            n = len(body.encode())
            if current and (len(current) == _BATCH or size + n > self.max_bytes):
                out.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            out.append(current)
        return out
