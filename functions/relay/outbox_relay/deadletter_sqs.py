"""The dead-letter queue on Amazon SQS: the event and the reason, acknowledged per message.

SQS's rules for a message body (SendMessage / SendMessageBatch API reference, "Amazon SQS message
quotas"), which a dead letter must meet whatever the row holds, or it is refused every time:

* only the XML 1.0 characters ``#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF``
  (the current reference answers anything else with ``InvalidMessageContents``; older versions
  said it was replaced by U+FFFD: either way the letter would not arrive as sent);
* at most the queue's ``MaximumMessageSize`` in UTF-8 bytes (1 KiB to 1 MiB; the default was
  256 KiB until 2025 and is 1 MiB now), message attributes included (none are sent here); a
  SendMessageBatch request's bodies together at most the service's maximum (1 MiB; 256 KiB before).

moto checks neither the characters nor the bytes (it counts characters), so both are enforced
here and checked in tests against the documented rules (tests/sqs_rules.py).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .model import DeadLetter
from .ports import Acknowledged, DeadLetterQueueDown
from .rowtext import shown

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger("outbox_relay")

# The MaximumMessageSize of queues made before 2025 (the default then; 1 MiB since): fits any
# queue not configured lower.  A queue taking more can raise it, up to 1 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 262_144
# The range of MaximumMessageSize SQS allows; below it no body is promised to fit.
MIN_MESSAGE_BYTES = 1024
MAX_MESSAGE_BYTES = 1_048_576
_BATCH = 10

PAYLOAD_OMITTED = "too large for the queue; the DEAD row keeps it"
TRUNCATED = "…[truncated]"
# Error codes of a SendMessageBatch call refused as a whole for what it carries, not for the
# queue's state: the letters are at fault, as with an entry failed with SenderFault.
_CONTENT_CODES = frozenset({"InvalidMessageContents", "InvalidParameterValue", "BatchRequestTooLong"})
# Text fields that may be cut when even the body without the payload is too large, event_id first:
# it gets up to half the room, so that an ordinary one always stays whole (redrive matches on it).
_CUTTABLE = (
    "event_id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "topic",
    "reason",
    "headers",
    "refused",
)

# What json.dumps(ensure_ascii=False) leaves raw that SQS refuses: surrogates (a Python str can
# hold lone ones) and the non-characters U+FFFE and U+FFFF.  It already escapes C0 controls.
_NOT_XML_CHARS = re.compile("[\ud800-\udfff\ufffe\uffff]+")


def _ignore(_index: int) -> None:
    pass


def _escape(match: re.Match[str]) -> str:
    # A whole run at once, in C: each of these characters is one UTF-16 unit, its \u escape.
    units = match.group().encode("utf-16-be", "surrogatepass")
    return "\\u" + units.hex("|", 2).replace("|", "\\u")


def _json(value: Any, ascii_only: bool = False) -> str:
    """Compact JSON that is legal SQS text: characters SQS refuses are JSON escapes, which every
    JSON reader turns back into the same string."""
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))
    return text if ascii_only else _NOT_XML_CHARS.sub(_escape, text)


def _size(text: str) -> int:
    """Bytes as SQS counts them (UTF-8).  Output of _json holds no surrogate, so this cannot fail."""
    return len(text.encode("utf-8"))


def _cost(text: str, ascii_only: bool) -> int:
    """Bytes a string adds to a body as a JSON string value (its quotes aside)."""
    return _size(_json(text, ascii_only)) - 2


def _at_least(body: dict[str, Any]) -> int:
    """A cheap lower bound of a body's size (a character costs a byte at least): rows far too
    large are not serialized whole only to be found too large."""
    return sum(len(v) for v in body.values() if isinstance(v, str))


def _cut(text: str, limit: int, ascii_only: bool) -> str:
    """``text``, or its longest prefix that with the truncation mark costs at most ``limit``."""
    if len(text) <= limit and _cost(text, ascii_only) <= limit:
        return text
    room = limit - _cost(TRUNCATED, ascii_only)
    if room <= 0:
        return ""
    # Every character costs at least one byte: no more than ``room`` of them can fit.
    low, high = 0, min(len(text), room)
    while low < high:
        mid = (low + high + 1) // 2
        if _cost(text[:mid], ascii_only) <= room:
            low = mid
        else:
            high = mid - 1
    return text[:low] + TRUNCATED


def _fit(body: dict[str, Any], max_bytes: int, ascii_only: bool = False) -> str | None:
    """``body`` as JSON within ``max_bytes``, its text fields cut if need be (each to a fair share
    of the room: short ones stay whole, the longest are cut); ``truncated`` maps each cut field to
    its full length in characters.
    None when even empty fields do not fit."""
    if _at_least(body) <= max_bytes:
        text = _json(body, ascii_only)
        if _size(text) <= max_bytes:
            return text
    texts = {k: body[k] for k in _CUTTABLE if isinstance(body.get(k), str)}
    # Budget against the largest possible ``truncated`` (every field cut): what is sent is no larger.
    skeleton = {**body, **dict.fromkeys(texts, ""), "truncated": {k: len(v) for k, v in texts.items()}}
    room = max_bytes - _size(_json(skeleton, ascii_only))
    if room < 0:
        return None
    cut: dict[str, str] = {}
    if "event_id" in texts:
        cut["event_id"] = _cut(texts.pop("event_id"), room // 2, ascii_only)
        room -= _cost(cut["event_id"], ascii_only)
    # Past max_bytes characters a field is cut whatever it holds: no need to weigh the rest.
    by_cost = sorted(texts.items(), key=lambda kv: _cost(kv[1][: max_bytes + 1], ascii_only))
    for n, (key, value) in enumerate(by_cost):
        cut[key] = _cut(value, room // (len(by_cost) - n), ascii_only)
        room -= _cost(cut[key], ascii_only)
    full = {**texts, "event_id": body.get("event_id")}
    truncated = {k: len(full[k]) for k, v in cut.items() if v != full[k]}
    text = _json({**body, **cut, "truncated": truncated}, ascii_only)
    return text if _size(text) <= max_bytes else None


def _last_resort(letter: DeadLetter, max_bytes: int) -> str:
    """A body for a queue below SQS's minimum size: the row's id, and the event id if it fits."""
    record = letter.record
    body = {"outbox_id": record.id, "event_id": record.event_id}
    return _fit(body, max_bytes, ascii_only=True) or _json({"outbox_id": record.id})


def dead_letter_body(letter: DeadLetter, max_bytes: int) -> str:
    """The JSON message: enough to understand and redrive the event; the payload if it fits.

    Always legal for SQS (characters and size, see the module's docstring) for any row and any
    ``max_bytes`` ≥ MIN_MESSAGE_BYTES, and always names ``outbox_id`` and ``event_id``: a body the
    queue refuses would be refused at every retry while its row waits.  When the body is too large
    the payload is left out (the DEAD row keeps it); when it still is, the longest text fields
    are cut.  Never raises."""
    record = letter.record
    try:
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
            "payload_bytes": record.payload_bytes,
        }
        if not record.loaded:  # too large to read with its page, or over the limit: never loaded
            body.pop("headers")
            body["headers_omitted"] = "not loaded; the DEAD row keeps them"
        if record.loaded and len(record.payload) <= max_bytes:  # as text or base64 it is no smaller
            try:
                # Strict UTF-8: it refuses encoded surrogates, so a decoded payload is valid text.
                body["payload"] = record.payload.decode("utf-8")
            except UnicodeDecodeError:
                body["payload_base64"] = base64.b64encode(record.payload).decode("ascii")
            if _at_least(body) <= max_bytes:
                text = _json(body)
                if _size(text) <= max_bytes:
                    return text
        body.pop("payload", None)
        body.pop("payload_base64", None)
        body["payload_omitted"] = PAYLOAD_OMITTED
        return _fit(body, max_bytes) or _last_resort(letter, max_bytes)
    except Exception:  # a letter nobody foresaw still goes out with its ids, never stuck on a crash
        log.exception("dead-letter body failed; sending the ids only", extra={"outbox_id": record.id})
        return _last_resort(letter, max_bytes)


def refused_body(letter: DeadLetter, refusal: str, max_bytes: int = MIN_MESSAGE_BYTES) -> str:
    """The smallest useful letter, for one SQS refused: ids, reason and the refusal, no payload
    and no headers (the DEAD row keeps them).  ASCII only (JSON escapes) and within SQS's
    minimum message size, so that any queue takes it whatever it refused in the full letter."""
    record = letter.record
    body = {
        "outbox_id": record.id,
        "event_id": record.event_id,
        "reason": letter.reason,
        "refused": refusal,
        "payload_omitted": "the queue refused the full letter; the DEAD row keeps the event",
    }
    return _fit(body, max_bytes, ascii_only=True) or _last_resort(letter, max_bytes)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


class SqsDeadLetterSink:
    """:class:`~outbox_relay.ports.DeadLetterSink` on one SQS queue (``DLQ_QUEUE_URL``).

    ``max_bytes`` must not exceed the queue's ``MaximumMessageSize``.  A letter SQS refuses for
    its content (a failed entry with ``SenderFault``; or every letter of a request refused as a
    whole with a content error, which names none) is sent once more as :func:`refused_body`, so
    that it is acknowledged rather than retried forever; a warning says so."""

    def __init__(
        self,
        client: SQSClient | Callable[[], SQSClient],
        queue_url: str,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not MIN_MESSAGE_BYTES <= max_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(
                f"max_bytes {max_bytes} is outside SQS's message sizes "
                f"({MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES})"
            )
        # A factory defers building the boto3 client (~0.1 s of a cold start) to the first dead
        # letter: most runs never send one.
        self._factory: Callable[[], SQSClient] = client if callable(client) else lambda: client
        self.queue_url = queue_url
        self.max_bytes = max_bytes

    @functools.cached_property
    def client(self) -> SQSClient:
        return self._factory()

    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        """Blocks for at most one bounded call per batch of 10 (``aws_clients.SQS``), plus one per
        batch of refused letters; ``acknowledged(i)`` is told of each letter as soon as its batch
        is answered.  After a call that failed as a whole (the queue, not a letter) no later call
        is tried (it would wait alike): :class:`DeadLetterQueueDown` says so, with the answers so
        far."""
        acked = acknowledged or _ignore
        bodies = [dead_letter_body(letter, self.max_bytes) for letter in letters]
        results: list[str | None] = ["not sent"] * len(letters)
        refused: dict[int, str] = {}  # letter index -> why SQS refused its full body
        down = self._send(bodies, range(len(letters)), results, refused, acked)
        if down is not None:
            for i, why in refused.items():
                results[i] = f"{why} (not resent: the queue failed)"
            raise DeadLetterQueueDown(down, results)
        self._resend_refused(letters, refused, results, acked)
        return results

    def _send(
        self,
        bodies: Sequence[str],
        indices: Sequence[int],
        results: list[str | None],
        refused: dict[int, str],
        acknowledged: Acknowledged,
    ) -> str | None:
        """Send ``bodies[i]`` for each i in ``indices``; record acknowledgements (told to
        ``acknowledged`` too) and failures in ``results``, content refusals in ``refused``.  Once a
        call failed as a whole, stop and answer why (None when every call was answered)."""
        batches = self._batches([bodies[i] for i in indices])
        for n, batch in enumerate(batches):
            members = [indices[k] for k in batch]
            entries = [{"Id": str(i), "MessageBody": bodies[i]} for i in members]
            try:
                response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "")).rsplit(".", 1)[-1]
                if code in _CONTENT_CODES:
                    refused.update(dict.fromkeys(members, _one_line(str(exc))))
                    continue
                return self._fail_rest(batches[n:], indices, results, _one_line(str(exc)))
            except BotoCoreError as exc:
                return self._fail_rest(batches[n:], indices, results, _one_line(str(exc)))
            for ok in response.get("Successful", []):
                results[int(ok["Id"])] = None
                acknowledged(int(ok["Id"]))
            for failed in response.get("Failed", []):
                i = int(failed["Id"])
                error = _one_line(f"{failed.get('Code')}: {failed.get('Message', '')}")
                if failed.get("SenderFault"):
                    refused[i] = error
                else:
                    results[i] = error
        return None

    @staticmethod
    def _fail_rest(
        batches: list[list[int]], indices: Sequence[int], results: list[str | None], error: str
    ) -> str:
        for batch in batches:
            for k in batch:
                results[indices[k]] = error
        return error

    def _resend_refused(
        self,
        letters: Sequence[DeadLetter],
        refused: dict[int, str],
        results: list[str | None],
        acknowledged: Acknowledged,
    ) -> None:
        """Once, with ids and reason only: a refused letter is this letter's problem, and a row
        left PENDING for it would be refused again at every run.  Raises DeadLetterQueueDown if
        the queue failed as a whole meanwhile."""
        if not refused:
            return
        bodies = {i: refused_body(letters[i], why) for i, why in refused.items()}
        indices = sorted(bodies)
        dense = [bodies[i] for i in indices]
        again: dict[int, str] = {}
        sub: list[str | None] = ["not sent"] * len(indices)
        down = self._send(dense, range(len(indices)), sub, again, lambda k: acknowledged(indices[k]))
        for k, i in enumerate(indices):
            record = letters[i].record
            if sub[k] is None:
                results[i] = None
                log.warning(
                    "dead letter refused by the queue; sent again without payload and headers",
                    extra={"outbox_id": record.id, "event_id": shown(record.event_id), "error": refused[i]},
                )
            else:
                results[i] = _one_line(f"{refused[i]}; the reduced letter too: {again.get(k, sub[k])}")
        if down is not None:
            raise DeadLetterQueueDown(down, results)

    def _batches(self, bodies: Sequence[str]) -> list[list[int]]:
        """Groups of ≤ 10 messages whose bodies together stay within ``max_bytes`` in UTF-8, as SQS
        counts a SendMessageBatch request (the sum of its bodies; no attributes are sent).  The
        bound is the queue's message size, never above SQS's 1 MiB batch limit."""
        out: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i, body in enumerate(bodies):
            n = len(body.encode("utf-8", "surrogatepass"))
            if current and (len(current) == _BATCH or size + n > self.max_bytes):
                out.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            out.append(current)
        return out
