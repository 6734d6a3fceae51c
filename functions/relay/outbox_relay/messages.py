"""Turning an outbox row into a Kafka record (the message contract), or saying why it cannot be."""

from __future__ import annotations

import functools
import json
import re

from .config import INTERNAL_TOPICS, TOPIC_CHARS, RelaySettings
from .model import Message, OutboxRecord
from .rowtext import problem

RESERVED_HEADERS = frozenset({"id", "event_type", "aggregate_type", "seq"})
_TOPIC = re.compile(f"[{TOPIC_CHARS}]{{1,249}}")


class InvalidEvent(ValueError):
    """The row can never be published as it is; the message is the dead-letter reason."""


class BodyNotLoaded(Exception):
    """The row's body was left out of the read (too large to read with the page) and has not
    been loaded: not the row's fault, it waits for a pass that loads it."""


@functools.lru_cache(maxsize=1024)
def legal_topic(name: str) -> bool:
    """Kafka's rule: 1 to 249 of ``[A-Za-z0-9._-]``, and not ``.`` or ``..``; and not one of
    Kafka's internal topics."""
    return _TOPIC.fullmatch(name) is not None and name not in (".", "..") and name not in INTERNAL_TOPICS


def topic_for(record: OutboxRecord, template: str) -> str:
    """The row's explicit ``topic``, else the template (default ``outbox.event.{aggregate_type}``)."""
    return route(record.topic, record.aggregate_type, record.event_type, template)


def route(topic: str | None, aggregate_type: str, event_type: str, template: str) -> str:
    """:func:`topic_for` from the columns (the writer's helper routes a row before writing it)."""
    if topic:
        return topic
    return template.format(aggregate_type=aggregate_type, event_type=event_type)


def encode(record: OutboxRecord, settings: RelaySettings) -> Message:
    """Build the Kafka record: key = aggregate_id, value = payload bytes as stored, headers
    ``id``, ``event_type``, ``aggregate_type`` (+ ``seq`` and the row's own headers).

    Raises :class:`InvalidEvent` for anything Kafka would reject or consumers could not read.
    """
    size = record.payload_bytes  # known without the payload: an oversize one is never loaded
    if size > settings.max_message_bytes:
        raise InvalidEvent(f"payload is {size} bytes, over the {settings.max_message_bytes}-byte limit")
    if not record.loaded:
        raise BodyNotLoaded(f"row {record.id}: {record.body_bytes} bytes not loaded")
    # Only a loaded row is judged on the rest: its dead letter then carries its body.
    _check_text(record)
    topic = topic_for(record, settings.topic_template)
    if not legal_topic(topic):
        raise InvalidEvent(f"topic {topic[:300]!r} is not a legal Kafka topic name")
    if settings.require_json:
        _parse_json(record.payload, "payload")
    headers = [
        ("id", record.event_id.encode()),
        ("event_type", record.event_type.encode()),
        ("aggregate_type", record.aggregate_type.encode()),
    ]
    if record.seq is not None:
        headers.append(("seq", str(record.seq).encode()))
    if record.headers:
        headers.extend(_extra_headers(record.headers))
    return Message(
        record_id=record.id,
        topic=topic,
        key=record.aggregate_id.encode(),
        value=record.payload,
        headers=headers,
    )


def _check_text(record: OutboxRecord) -> None:
    """Every text column holds text of its character set (the store reads any bytes, losslessly:
    rowtext.py).  Anything else is never sent, not even as a lossy replacement."""
    columns = (
        ("event_id", record.event_id, True),
        ("aggregate_type", record.aggregate_type, False),
        ("aggregate_id", record.aggregate_id, False),
        ("event_type", record.event_type, False),
        ("topic", record.topic, True),
        ("headers", record.headers, False),
    )
    for column, value, ascii_only in columns:
        why = None if value is None else problem(value, column, ascii_only)
        if why is not None:
            raise InvalidEvent(why)


def _parse_json(raw: str | bytes, what: str) -> object:
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidEvent(f"{what} is not valid JSON: {_first_line(exc)}") from None
    except RecursionError:
        raise InvalidEvent(f"{what} is JSON nested too deeply to parse") from None


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate, from a "\ud800" escape in JSON
        raise InvalidEvent(f"{what} is not valid unicode: {_first_line(exc)}") from None


def _extra_headers(raw: str) -> list[tuple[str, bytes]]:
    parsed = _parse_json(raw, "headers column")
    if not isinstance(parsed, dict):
        raise InvalidEvent("headers column must be a JSON object of string values")
    out: list[tuple[str, bytes]] = []
    for name, value in parsed.items():
        if name in RESERVED_HEADERS:
            raise InvalidEvent(f"headers column may not set the reserved header {name!r}")
        if not isinstance(value, str):
            raise InvalidEvent(f"header {name!r} must be a string, got {type(value).__name__}")
        _utf8(name, "a header name")  # kafka-python encodes it when sending
        out.append((name, _utf8(value, f"header {name!r}")))
    return out


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
