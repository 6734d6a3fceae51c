"""Amazon SQS's documented rules for message bodies, to check dead letters against: moto checks
neither the characters nor the size in bytes (it counts characters), so passing moto proves little.

Sources (AWS API reference, SendMessage and SendMessageBatch; SQS Developer Guide, "Amazon SQS
message quotas"):

* a body is at least one character, and only ``#x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to
  #xFFFD | #x10000 to #x10FFFF`` (the W3C XML 1.0 ``Char`` production); anything else is refused
  with ``InvalidMessageContents``;
* a message is at most the queue's ``MaximumMessageSize`` bytes (1,024 to 1,048,576; by default
  262,144 until 2025, 1,048,576 now), body and message attributes together, in UTF-8;
* a SendMessageBatch request has at most 10 entries, and its bodies together are at most the
  service maximum (1 MiB now; 256 KiB before 2025): ``max_bytes`` here, which is never more.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

ALLOWED = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+")
MAX_BATCH_ENTRIES = 10


def sqs_refusal(body: str, max_bytes: int) -> str | None:
    """Why SQS would refuse ``body`` on a queue whose MaximumMessageSize is ``max_bytes``; None
    if it accepts it."""
    if not body:
        return "empty body"
    if not ALLOWED.fullmatch(body):
        bad = next(c for c in body if not ALLOWED.fullmatch(c))
        return f"InvalidMessageContents: character U+{ord(bad):04X} at {body.index(bad)}"
    size = len(body.encode("utf-8"))  # cannot fail: surrogates are refused above
    if size > max_bytes:
        return f"message of {size} bytes, over {max_bytes}"
    return None


def sqs_accepts(body: str, max_bytes: int) -> bool:
    return sqs_refusal(body, max_bytes) is None


def batch_refusal(bodies: Sequence[str], max_bytes: int) -> str | None:
    """Why SQS would refuse a SendMessageBatch request of these bodies as a whole."""
    if not bodies or len(bodies) > MAX_BATCH_ENTRIES:
        return f"{len(bodies)} entries"
    total = sum(len(b.encode("utf-8", "surrogatepass")) for b in bodies)
    if total > max_bytes:
        return f"BatchRequestTooLong: {total} bytes, over {max_bytes}"
    return None


class DocumentedSqs:
    """A SendMessageBatch that follows the documented rules where moto does not: a request too
    large as a whole is refused, an entry breaking a rule fails on its own with SenderFault."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.calls: list[list[dict[str, str]]] = []
        self.queue: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls.append(Entries)
        why = batch_refusal([e["MessageBody"] for e in Entries], self.max_bytes)
        if why:
            code = why.split(":")[0] if why.startswith("Batch") else "TooManyEntriesInBatchRequest"
            raise ClientError({"Error": {"Code": code, "Message": why}}, "SendMessageBatch")
        out: dict[str, Any] = {"Successful": [], "Failed": []}
        for entry in Entries:
            refusal = sqs_refusal(entry["MessageBody"], self.max_bytes)
            if refusal is None:
                self.queue.append(entry["MessageBody"])
                out["Successful"].append({"Id": entry["Id"], "MessageId": str(len(self.queue))})
            else:
                code = "InvalidMessageContents" if refusal.startswith("Invalid") else "InvalidParameterValue"
                out["Failed"].append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": code, "Message": refusal}
                )
        return out
