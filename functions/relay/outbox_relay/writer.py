"""The writer's helper: add an event to the outbox inside the caller's open transaction.

    conn = pymysql.connect(..., autocommit=False)
    with conn.cursor() as cur:
        cur.execute("UPDATE orders SET state = 'PAID', version = version + 1 WHERE id = %s", (order_id,))
    add_event(conn, "order", order_id, "OrderPaid", {"orderId": order_id, "paidCents": 1200})
    conn.commit()          # the change and its event, together or not at all

It validates everything the relay would otherwise dead-letter, before touching the database.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import pymysql

from .messages import RESERVED_HEADERS, legal_topic
from .sql import OutboxSql

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_TEXT = 255


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
    max_payload_bytes: int = 1_048_576,
) -> str:
    """Insert one event in the caller's transaction (never commits); returns its event id.

    ``payload`` is a JSON-serializable value, or already-serialized JSON (``str``/``bytes``).
    Lock the aggregate (``SELECT … FOR UPDATE`` or a version check) before calling this, so that
    events of one aggregate are numbered in commit order.
    """
    if conn.get_autocommit():
        raise OutboxWriteError(
            "the connection is in autocommit mode: the event would not share the business change's commit"
        )
    for name, value in (
        ("aggregate_type", aggregate_type),
        ("aggregate_id", aggregate_id),
        ("event_type", event_type),
    ):
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            raise OutboxWriteError(f"{name} must be a non-empty string of at most {MAX_TEXT} characters")
    body = _payload_bytes(payload)
    if len(body) > max_payload_bytes:
        raise OutboxWriteError(f"payload is {len(body)} bytes, over the {max_payload_bytes}-byte limit")
    if topic is not None and not legal_topic(topic):
        raise OutboxWriteError(f"topic {topic!r} is not a legal Kafka topic name")
    header_text = None
    if headers:
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise OutboxWriteError("headers must map strings to strings")
            if key in RESERVED_HEADERS:
                raise OutboxWriteError(f"header {key!r} is reserved (the relay sets it)")
        header_text = json.dumps(dict(headers), ensure_ascii=False, separators=(",", ":"))
    if seq is not None and (type(seq) is not int or seq < 0):
        raise OutboxWriteError("seq must be a non-negative integer (the aggregate's version)")
    event_id = event_id or str(uuid.uuid4())
    if not _UUID.fullmatch(event_id):
        raise OutboxWriteError(f"event_id {event_id!r} is not a UUID")
    with conn.cursor() as cur:
        cur.execute(
            OutboxSql(table).insert_event,
            (event_id, aggregate_type, aggregate_id, event_type, body, topic, header_text, seq),
        )
    return event_id


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | str):
        raw = payload.encode() if isinstance(payload, str) else payload
        try:
            json.loads(raw)
        except ValueError as exc:
            raise OutboxWriteError(f"payload is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
        return raw
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise OutboxWriteError(f"payload cannot be serialized to JSON: {exc}") from None
