"""Row content for the simulation, drawn from the hostile families: invalid encodings in every
text column, payloads of any size up to the schema's limits and past the broker's, bad JSON, bad
headers, illegal topics.  And how the relay's real store turns stored bytes into a record."""

from __future__ import annotations

import json
import random
from typing import Any

from outbox_relay import rowtext
from outbox_relay.model import OutboxRecord
from outbox_relay.sql import INLINE_BODY_BYTES

from .store import Row

# Byte strings that are not UTF-8 (or not ASCII, for the ascii columns), each of a family.
BAD_TEXT = (
    b"\xff",  # never valid
    b"\xc3",  # a truncated sequence
    b"\x80abc",  # a lone continuation byte
    b"\xc0\xaf",  # an overlong form
    b"\xed\xa0\x80\xed\xb0\x80",  # CESU-8: a surrogate pair encoded as two 3-byte sequences
    b"\xed\xa0\x80",  # a lone surrogate (a _binary literal, a lax driver)
    b"\xf4\x90\x80\x80",  # past U+10FFFF
)
TEXT_COLUMNS = ("aggregate_type", "aggregate_id", "event_type", "topic", "headers", "event_id")


def hostile(rng: random.Random, text: bytes) -> bytes:
    """``text`` with a bad byte sequence put somewhere in it."""
    bad = rng.choice(BAD_TEXT)
    at = rng.randint(0, len(text))
    return text[:at] + bad + text[at:]


def payload(rng: random.Random, size: int) -> bytes:
    body: dict[str, Any] = {"n": rng.randint(0, 10**6), "pad": ""}
    raw = json.dumps(body)
    body["pad"] = "x" * max(0, size - len(raw))
    return json.dumps(body).encode()


def decode_text(raw: bytes) -> str:
    """How the real store turns a text column's bytes into ``str`` (store_mysql reads them as
    bytes and decodes them losslessly)."""
    return rowtext.decode(raw)


def record_of(row: Row, due: bool, wait_seconds: float) -> OutboxRecord:
    """The record MySQLOutboxStore.read_heads builds from this row (store_mysql._record): bodies over
    INLINE_BODY_BYTES left out, text decoded as the real store decodes it."""
    inline_payload = len(row.payload) <= INLINE_BODY_BYTES
    headers_size = None if row.headers is None else len(row.headers)
    inline_headers = row.headers is None or len(row.headers) <= INLINE_BODY_BYTES
    loaded = inline_payload and inline_headers
    return OutboxRecord(
        id=row.id,
        event_id=decode_text(row.event_id),
        aggregate_type=decode_text(row.aggregate_type),
        aggregate_id=decode_text(row.aggregate_id),
        event_type=decode_text(row.event_type),
        payload=row.payload if loaded else b"",
        topic=None if row.topic is None else decode_text(row.topic),
        headers=None if (row.headers is None or not loaded) else decode_text(row.headers),
        seq=row.seq,
        attempts=row.attempts,
        shard=row.shard,
        due=due,
        wait_seconds=wait_seconds,
        payload_size=len(row.payload),
        headers_size=headers_size or 0,
        loaded=loaded,
    )
