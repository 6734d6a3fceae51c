"""The writer's helper: add an event to the outbox inside the caller's open transaction.

    conn = pymysql.connect(..., autocommit=False)
    with conn.cursor() as cur:
        cur.execute("UPDATE orders SET state = 'PAID', version = version + 1 WHERE id = %s", (order_id,))
    add_event(conn, "order", order_id, "OrderPaid", {"orderId": order_id, "paidCents": 1200})
    conn.commit()          # the change and its event, together or not at all

It refuses, before touching the database, every row the relay would dead-letter for certain: the
row is judged by the relay's own :func:`messages.encode`, under the relay's topic template and
message limit (pass yours when you changed them: ``OUTBOX_TOPIC_TEMPLATE``,
``OUTBOX_MAX_MESSAGE_BYTES``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import pymysql

from .config import RelaySettings, check_topic_template
from .messages import RESERVED_HEADERS, InvalidEvent, encode, legal_topic, route
from .model import OutboxRecord
from .rowtext import problem
from .sql import OutboxSql

__all__ = ["MAX_TEXT", "OutboxWriteError", "add_event"]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_TEXT = 255
# Column sizes (infra/migrations): in a non-strict sql_mode a longer value is cut, not refused,
# and a cut payload or headers column is no longer JSON.
_MAX_PAYLOAD_COLUMN = 16_777_215  # MEDIUMBLOB
_MAX_HEADERS_COLUMN = 65_535  # TEXT, in bytes
_MAX_SEQ = 2**64 - 1  # BIGINT UNSIGNED


class OutboxWriteError(ValueError):
    """The event was not added; nothing was written.  ``str()`` says why in one line."""


def add_event(
    conn: pymysql.connections.Connection[Any],
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: Any,
    *,
    topic: str | None = None,
    headers: Mapping[str, str] | None = None,
    seq: int | None = None,
    event_id: str | None = None,
    table: str = "outbox",
    max_payload_bytes: int = RelaySettings.max_message_bytes,
    topic_template: str = RelaySettings.topic_template,
) -> str:
    """Insert one event in the caller's transaction (never commits); returns its event id.

    ``payload`` is a JSON-serializable value, or already-serialized JSON (``str``/``bytes``).
    ``max_payload_bytes`` and ``topic_template`` are the relay's ``OUTBOX_MAX_MESSAGE_BYTES`` and
    ``OUTBOX_TOPIC_TEMPLATE``.  Lock the aggregate (``SELECT … FOR UPDATE`` or a version check)
    before calling this, so that events of one aggregate are numbered in commit order.
    """
    if conn.get_autocommit():
        raise OutboxWriteError(
            "the connection is in autocommit mode: the event would not share the business change's commit"
        )
    charset = conn.charset  # what PyMySQL's SET NAMES set (character_set_name() returns it)
    if charset != "utf8mb4":
        # utf8/utf8mb3 has no 4-byte characters: an emoji in a key would be stored as "????".
        raise OutboxWriteError(
            f"the connection's character set is {charset!r}, not 'utf8mb4': text outside the BMP"
            " (emoji) would be stored as '?' (connect with charset='utf8mb4')"
        )
    for name, value in (
        ("aggregate_type", aggregate_type),
        ("aggregate_id", aggregate_id),
        ("event_type", event_type),
    ):
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            raise OutboxWriteError(f"{name} must be a non-empty string of at most {MAX_TEXT} characters")
        _check_text(value, name)
    if topic is not None and not isinstance(topic, str):
        raise OutboxWriteError("topic must be a string or None")
    template_problem = check_topic_template(topic_template)
    if template_problem:
        raise OutboxWriteError(f"topic_template {topic_template!r} {template_problem}")
    routed = route(topic, aggregate_type, event_type, topic_template)
    if not legal_topic(routed):
        made = "" if topic else f" (made by topic_template {topic_template!r})"
        raise OutboxWriteError(
            f"topic {routed[:300]!r}{made} is not a legal Kafka topic name (1 to 249 of [A-Za-z0-9._-],"
            " not '.' or '..', not an internal topic)"
        )
    header_text = _header_text(headers)
    if seq is not None and (type(seq) is not int or not 0 <= seq <= _MAX_SEQ):
        raise OutboxWriteError("seq must be an integer from 0 to 2**64-1 (the aggregate's version)")
    event_id = event_id or str(uuid.uuid4())
    if not isinstance(event_id, str) or not _UUID.fullmatch(event_id):
        raise OutboxWriteError(f"event_id {event_id!r} is not a UUID")
    if type(max_payload_bytes) is not int or max_payload_bytes < 1:
        raise OutboxWriteError("max_payload_bytes must be a positive integer")
    body = _payload_bytes(payload)
    limit = min(max_payload_bytes, _MAX_PAYLOAD_COLUMN)
    if len(body) > limit:
        raise OutboxWriteError(f"payload is {len(body)} bytes, over the {limit}-byte limit")
    # The last word is the relay's: the row exactly as it will read it, judged by its own code.
    record = OutboxRecord(
        id=0,
        event_id=event_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=body,
        topic=topic,
        headers=header_text,
        seq=seq,
        attempts=0,
        shard=0,
        due=True,
    )
    settings = RelaySettings(topic_template=topic_template, max_message_bytes=max_payload_bytes)
    try:
        encode(record, settings)
    except InvalidEvent as exc:
        raise OutboxWriteError(str(exc)) from None
    with conn.cursor() as cur:
        cur.execute(
            OutboxSql(table).insert_event,
            (event_id, aggregate_type, aggregate_id, event_type, body, topic, header_text, seq),
        )
    return event_id


def _check_text(value: str, name: str) -> None:
    """Lone surrogates (from a ``"\\ud800"`` JSON escape) are not text: the driver cannot send them."""
    why = problem(value, name)
    if why is not None:
        raise OutboxWriteError(why)


def _header_text(headers: Mapping[str, str] | None) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise OutboxWriteError("headers must map strings to strings")
        if key in RESERVED_HEADERS:
            raise OutboxWriteError(f"header {key!r} is reserved (the relay sets it)")
        _check_text(key, "a header name")
        _check_text(value, f"header {key[:100]!r}")
    text = json.dumps(dict(headers), ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode())
    if size > _MAX_HEADERS_COLUMN:
        raise OutboxWriteError(f"headers are {size} bytes as JSON, over the column's {_MAX_HEADERS_COLUMN}")
    return text


def _payload_bytes(payload: Any) -> bytes:
    """Already-serialized JSON is stored as given (the relay judges it, as it would judge it);
    anything else is serialized here, strictly: no NaN or infinities, no two keys that become
    the same string (``{1: …, "1": …}``), which JSON parsers would silently merge."""
    if isinstance(payload, str):
        _check_text(payload, "payload")
        return payload.encode()
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise OutboxWriteError(f"payload cannot be serialized to JSON: {_first_line(exc)}") from None
    _check_text(text, "payload")  # a lone surrogate in a str value or key
    try:
        json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise OutboxWriteError("payload is JSON nested too deeply to parse") from None
    return text.encode()


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise OutboxWriteError(
                f"payload has the key {key[:100]!r} twice once serialized (keys become strings)"
            )
        seen.add(key)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
