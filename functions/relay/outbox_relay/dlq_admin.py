"""The dead-letter queue as operators read it: letters are untrusted input.

Anything can land in the queue (a forged message, a letter of another outbox sharing the queue,
a body cut short), so a body is a letter only when it is a JSON object naming an ``outbox_id``
(an integer in the id column's range) and an ``event_id`` (a string), as the relay writes it.
The commands then match it against the outbox by both, byte for byte (admin_dead.py).

Reading takes the letters out of sight for a visibility timeout; every letter a command does not
delete is made visible again as soon as it is done with them (``release``), so a command that
stops early, or a run right after it, never finds the queue falsely empty.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .sql import MAX_OUTBOX_ID

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

EVENT_ID_CHARS = 36  # CHAR(36)
_BATCH = 10  # SQS's batch limit
# Long enough for a command to match, redrive and delete what it read, short enough that letters
# a killed command never released are back soon.  Extended (``keep``) every KEEP_EVERY_SECONDS
# while the command holds them: in a long scan, a wait for leases, a long redrive.
VISIBILITY_SECONDS = 120
KEEP_EVERY_SECONDS = 30.0
# A short wait asks every SQS server (a zero wait samples a few, and can answer empty while
# letters remain).  moto keeps one list, so the tests need none.
RECEIVE_WAIT_SECONDS = 1


class QueueError(Exception):
    """An SQS call failed; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class Letter:
    message_id: str
    receipt: str
    outbox_id: int | None
    event_id: str | None
    # Why the body is not a letter the relay wrote (None: it is one).
    problem: str | None

    @property
    def well_formed(self) -> bool:
        return self.problem is None


def parse_letter(message_id: str, receipt: str, body: str) -> Letter:
    """What a message says about itself; never raises, whatever the body."""

    def bad(problem: str) -> Letter:
        return Letter(message_id, receipt, None, None, problem)

    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return bad("not JSON")
    if not isinstance(data, dict):
        return bad(f"a JSON {type(data).__name__}, not an object")
    outbox_id, event_id = data.get("outbox_id"), data.get("event_id")
    # bool is an int in Python; JSON's true is not an id.
    if type(outbox_id) is not int or not 1 <= outbox_id <= MAX_OUTBOX_ID:
        return bad("no outbox_id in the id range")
    if "event_id" not in data:  # the relay's last resort for a tiny queue: the row's id alone
        return Letter(message_id, receipt, outbox_id, None, "no event_id")
    if not isinstance(event_id, str) or not event_id:
        return bad("event_id is not a non-empty string")
    if len(event_id) > EVENT_ID_CHARS:
        # No row holds it (and a letter read is kept for the whole command: never a long one).
        return Letter(
            message_id, receipt, outbox_id, None, f"event_id longer than {EVENT_ID_CHARS} characters"
        )
    return Letter(message_id, receipt, outbox_id, event_id, None)


@dataclass
class DeleteResult:
    deleted: int = 0
    # (letter, why) per message SQS did not delete
    failed: list[tuple[Letter, str]] = field(default_factory=list)


class DeadLetterQueueAdmin:
    """Scan, delete and release letters of one queue; every SQS error as :class:`QueueError`."""

    def __init__(self, client: SQSClient | Callable[[], SQSClient], queue_url: str) -> None:
        self._factory: Callable[[], SQSClient] = client if callable(client) else lambda: client
        self._client: SQSClient | None = None
        self.queue_url = queue_url

    @property
    def client(self) -> SQSClient:
        if self._client is None:
            self._client = self._call("connect", self._factory)
        return self._client

    def scan(
        self,
        max_letters: int,
        deadline: float,
        on_page: Callable[[list[Letter]], None] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> list[Letter]:
        """Read up to ``max_letters`` letters (each once: by message id), until the queue shows no
        more, ``deadline`` (monotonic) passes or ``stop()``.  Bodies are not kept, only what they
        name."""
        seen: dict[str, Letter] = {}
        while len(seen) < max_letters and time.monotonic() < deadline and not stop():
            got = self._call(
                "receive",
                lambda: self.client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=min(_BATCH, max_letters - len(seen)),
                    VisibilityTimeout=VISIBILITY_SECONDS,
                    WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
                ),
            )
            page = [
                parse_letter(str(m.get("MessageId", "")), str(m["ReceiptHandle"]), str(m.get("Body", "")))
                for m in got.get("Messages", [])
                if "ReceiptHandle" in m
            ]
            fresh = [letter for letter in page if letter.message_id not in seen]
            for letter in page:
                seen[letter.message_id] = letter  # the latest receipt is the one that counts
            if on_page is not None and fresh:
                on_page(fresh)
            if not page:  # a long poll that found nothing: the queue holds no more visible letters
                break
        return list(seen.values())

    def delete(self, letters: Sequence[Letter]) -> DeleteResult:
        """Delete ``letters``; those SQS did not delete are reported, never counted."""
        result = DeleteResult()
        for start in range(0, len(letters), _BATCH):
            chunk = letters[start : start + _BATCH]
            answer = self._call(
                "delete",
                lambda chunk=chunk: self.client.delete_message_batch(  # type: ignore[misc]
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": x.receipt} for i, x in enumerate(chunk)],
                ),
            )
            result.deleted += len(answer.get("Successful", []))
            for failure in answer.get("Failed", []):
                why = f"{failure.get('Code', '?')}: {failure.get('Message', '')}".strip()
                result.failed.append((chunk[int(failure["Id"])], " ".join(why.split())))
        return result

    def release(self, letters: Sequence[Letter]) -> int:
        """Make ``letters`` visible again now; returns how many SQS did not take back (they come
        back by themselves when their visibility timeout ends)."""
        return self._visibility(letters, 0)

    def keep(self, letters: Sequence[Letter]) -> int:
        """Hide ``letters`` for another VISIBILITY_SECONDS (no other reader takes them meanwhile);
        returns how many SQS did not extend."""
        return self._visibility(letters, VISIBILITY_SECONDS)

    def others_reading(self) -> int:
        """Letters out of sight right now (SQS's approximate count), ours included."""
        got = self._call(
            "read the queue's attributes",
            lambda: self.client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
            ),
        )
        return int(got.get("Attributes", {}).get("ApproximateNumberOfMessagesNotVisible", 0))

    def _visibility(self, letters: Sequence[Letter], seconds: int) -> int:
        missed = 0
        for start in range(0, len(letters), _BATCH):
            chunk = letters[start : start + _BATCH]
            try:
                answer = self._call(
                    "change visibility",
                    lambda chunk=chunk: self.client.change_message_visibility_batch(  # type: ignore[misc]
                        QueueUrl=self.queue_url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": x.receipt, "VisibilityTimeout": seconds}
                            for i, x in enumerate(chunk)
                        ],
                    ),
                )
            except QueueError:
                missed += len(chunk)
                continue
            missed += len(answer.get("Failed", []))
        return missed

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        # Imported here: the CLI's other commands run without the relay extra (no botocore).
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            return call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            message = " ".join(str(error.get("Message", "")).split())
            raise QueueError(f"SQS {what} failed: {error.get('Code', '?')}: {message}") from exc
        except BotoCoreError as exc:
            raise QueueError(f"SQS {what} failed: {' '.join(str(exc).split())}") from exc
