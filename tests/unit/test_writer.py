"""The writer's helper refuses, before writing, every row the relay would dead-letter for certain,
and nothing the relay would publish (the relay's own encode is the judge)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_relay.config import RelaySettings
from outbox_relay.messages import InvalidEvent, encode
from outbox_relay.model import OutboxRecord
from outbox_relay.rowtext import decode, raw
from outbox_relay.writer import OutboxWriteError, add_event

EVENT_ID = "0b6c7c1e-0000-4000-8000-000000000001"


class Cursor:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str, params: tuple[Any, ...]) -> int:
        # What PyMySQL does with a str parameter: encoded strictly, in the connection's encoding.
        self.conn.executed.append(tuple(p.encode() if isinstance(p, str) else p for p in params))
        return 1


class Conn:
    """Enough of a PyMySQL connection for the writer: records the INSERT's parameters."""

    def __init__(self, charset: str = "utf8mb4") -> None:
        self.charset = charset
        self.executed: list[tuple[Any, ...]] = []

    def get_autocommit(self) -> bool:
        return False

    def cursor(self) -> Cursor:
        return Cursor(self)


def _add(conn: Conn, **kwargs: Any) -> str:
    args: dict[str, Any] = {
        "aggregate_type": "order",
        "aggregate_id": "o-1",
        "event_type": "E",
        "payload": {},
        "event_id": EVENT_ID,
    }
    args.update(kwargs)
    return add_event(conn, **args)  # type: ignore[arg-type]


def _refused(**kwargs: Any) -> str:
    conn = Conn(kwargs.pop("charset", "utf8mb4"))
    with pytest.raises(OutboxWriteError) as info:
        _add(conn, **kwargs)
    assert conn.executed == [], "nothing is written"
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"aggregate_type": "order v2"}, "topic 'outbox.event.order v2' (made by topic_template"),
        ({"aggregate_type": "commande-é"}, "is not a legal Kafka topic name"),
        ({"aggregate_type": "x" * 255}, "is not a legal Kafka topic name"),
        ({"aggregate_type": ".", "topic_template": "{aggregate_type}"}, "topic '.' (made by"),
        ({"aggregate_type": "__consumer_offsets", "topic_template": "{aggregate_type}"}, "legal Kafka"),
        ({"event_type": "Order Paid", "topic_template": "{aggregate_type}.{event_type}"}, "legal Kafka"),
        ({"topic_template": "events {aggregate_type}"}, "topic_template 'events {aggregate_type}' has ' '"),
        ({"aggregate_id": "o-\ud83d"}, "aggregate_id is not valid UTF-8"),
        ({"headers": {"tenant": "t\udcff"}}, "header 'tenant' is not valid UTF-8"),
        ({"payload": '{"a": "\ud800"}'}, "payload is not valid UTF-8"),
        ({"payload": {"a": "\ud800"}}, "payload is not valid UTF-8"),
        ({"payload": {1: "a", "1": "b"}}, "payload has the key '1' twice"),
        ({"payload": {"a": {True: 1, "true": 2}}}, "payload has the key 'true' twice"),
        ({"payload": "[" * 100_000 + "]" * 100_000}, "payload is JSON nested too deeply"),
        ({"payload": b" " * (2**24), "max_payload_bytes": 2**25}, "over the 16777215-byte limit"),
        ({"headers": {"h": "x" * 70_000}}, "headers are 70008 bytes as JSON, over the column's 65535"),
        ({"seq": 2**64}, "seq must be an integer from 0 to 2**64-1"),
        ({"charset": "utf8"}, "the connection's character set is 'utf8', not 'utf8mb4'"),
        ({"charset": "utf8mb3"}, "character set is 'utf8mb3'"),
    ],
)
def test_refuses_in_one_line_before_writing(kwargs: dict[str, Any], says: str) -> None:
    assert says in _refused(**kwargs)


def test_what_the_relay_accepts_is_written() -> None:
    """Already-serialized JSON is the relay's to judge, and its parser takes duplicate keys, NaN
    and UTF-16; an explicit topic routes whatever the aggregate type."""
    conn = Conn()
    for kwargs in (
        {"payload": b'{"a": 1, "a": NaN}'},
        {"payload": '{"a": 1}'.encode("utf-16")},
        {"payload": bytearray(b"[]")},
        {"aggregate_type": "commande v2 🙂", "topic": "orders"},
        {"aggregate_type": "x" * 236},  # outbox.event. + 236 = 249
        {"payload": b" " * (RelaySettings.max_message_bytes - 2) + b"{}"},
    ):
        _add(conn, **kwargs)
    assert len(conn.executed) == 6


def _as_read(params: tuple[Any, ...]) -> OutboxRecord:
    """The row the relay reads back from the INSERT's bytes (rowtext.decode, as the store does)."""
    event_id, aggregate_type, aggregate_id, event_type, payload, topic, headers, seq = params
    return OutboxRecord(
        id=1,
        event_id=decode(event_id),
        aggregate_type=decode(aggregate_type),
        aggregate_id=decode(aggregate_id),
        event_type=decode(event_type),
        payload=payload,
        topic=None if topic is None else decode(topic),
        headers=None if headers is None else decode(headers),
        seq=seq,
        attempts=0,
        shard=0,
        due=True,
    )


def _by_hand(
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: Any,
    topic: str | None,
    headers: Mapping[str, str] | None,
    seq: int | None,
) -> OutboxRecord:
    """The same event written by hand (a plain INSERT), as the relay would read it."""
    if isinstance(payload, str):
        body = raw(payload)
    elif isinstance(payload, bytes):
        body = payload
    else:
        body = raw(json.dumps(payload, ensure_ascii=False))
    return OutboxRecord(
        id=1,
        event_id=EVENT_ID,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=body,
        topic=topic,
        headers=json.dumps(dict(headers), ensure_ascii=False) if headers else None,
        seq=seq,
        attempts=0,
        shard=0,
        due=True,
    )


# Text of every kind: topic characters, the rest of ASCII, anything else, lone surrogates.
TEXT = st.text(
    st.one_of(
        st.sampled_from("abcXYZ019._-"),
        st.characters(max_codepoint=127),
        st.characters(),
        st.characters(categories=["Cs"]),
    ),
    max_size=12,
)
NAMES = st.one_of(TEXT, st.sampled_from([".", "..", "__consumer_offsets", "order"]), st.just("a" * 240))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | TEXT,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.one_of(TEXT, st.integers()), inner, max_size=3)
    ),
    max_leaves=8,
)
SERIALIZED = st.sampled_from(['{"a":1,"a":2}', "[NaN, Infinity]", '{"a":', "01", '"x"', "", " {} "])
PAYLOADS = st.one_of(
    JSON_VALUES,
    SERIALIZED,
    SERIALIZED.map(str.encode),
    SERIALIZED.map(lambda s: s.encode("utf-16")),
    TEXT,
    st.binary(max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(
    aggregate_type=NAMES,
    aggregate_id=TEXT,
    event_type=NAMES,
    payload=PAYLOADS,
    topic=st.none() | NAMES,
    headers=st.none() | st.dictionaries(TEXT | st.sampled_from(["id", "seq"]), TEXT, max_size=2),
    seq=st.none() | st.integers(min_value=-1, max_value=2**64 - 1),
    template=st.sampled_from(
        ["outbox.event.{aggregate_type}", "{aggregate_type}.{event_type}", "{event_type}"]
    ),
    limit=st.sampled_from([8, 64, RelaySettings.max_message_bytes]),
)
def test_the_writer_and_the_relay_agree(
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: Any,
    topic: str | None,
    headers: dict[str, str] | None,
    seq: int | None,
    template: str,
    limit: int,
) -> None:
    relay = RelaySettings(topic_template=template, max_message_bytes=limit)
    conn = Conn()
    try:
        _add(
            conn,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            event_type=event_type,
            payload=payload,
            topic=topic,
            headers=headers,
            seq=seq,
            topic_template=template,
            max_payload_bytes=limit,
        )
    except OutboxWriteError as exc:
        assert conn.executed == [] and "\n" not in str(exc)
    else:
        # Written: the relay publishes it as stored.
        (params,) = conn.executed
        encode(_as_read(params), relay)
        return
    # Refused: fine whenever the relay would dead-letter the same row written by hand; the
    # writer refuses more only for its own contract (empty or over-long text, its strict
    # serializer, a reserved header or a negative seq, which the driver or the column would refuse).
    try:
        encode(_by_hand(aggregate_type, aggregate_id, event_type, payload, topic, headers, seq), relay)
    except InvalidEvent:
        return
    own_rules = (
        not all(0 < len(v) <= 255 for v in (aggregate_type, aggregate_id, event_type))
        or not isinstance(payload, str | bytes)
        or (seq is not None and seq < 0)
    )
    assert own_rules, "the writer refused a row the relay would publish"
