"""The message contract: topic routing, key, value bytes as stored, headers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.config import RelaySettings
from outbox_relay.deadletter_sqs import MIN_MESSAGE_BYTES, dead_letter_body
from outbox_relay.messages import InvalidEvent, encode, topic_for
from outbox_relay.model import DeadLetter, OutboxRecord
from outbox_relay.rowtext import decode, raw, shown
from tests.sqs_rules import sqs_accepts

RECORD = OutboxRecord(
    id=7,
    event_id="0b6c7c1e-0000-4000-8000-000000000001",
    aggregate_type="order",
    aggregate_id="o-42",
    event_type="OrderPlaced",
    payload=b'{"total": 10}',
    topic=None,
    headers=None,
    seq=None,
    attempts=0,
    shard=3,
    due=True,
)
SETTINGS = RelaySettings()


def test_default_topic_key_value_and_headers() -> None:
    message = encode(RECORD, SETTINGS)
    assert message.topic == "outbox.event.order"
    assert message.key == b"o-42" and message.value == b'{"total": 10}'
    assert message.headers == [
        ("id", RECORD.event_id.encode()),
        ("event_type", b"OrderPlaced"),
        ("aggregate_type", b"order"),
    ]


def test_explicit_topic_wins_and_template_may_use_event_type() -> None:
    assert topic_for(dataclasses.replace(RECORD, topic="orders.v2"), SETTINGS.topic_template) == "orders.v2"
    assert topic_for(RECORD, "{aggregate_type}.{event_type}") == "order.OrderPlaced"


def test_seq_and_row_headers_are_added() -> None:
    record = dataclasses.replace(RECORD, seq=5, headers='{"traceparent": "00-abc", "tenant": "t1"}')
    headers = dict(encode(record, SETTINGS).headers)
    assert headers["seq"] == b"5" and headers["traceparent"] == b"00-abc" and headers["tenant"] == b"t1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"payload": b"{nope"}, "payload is not valid JSON: Expecting property name"),
        ({"payload": b"\xff\xfe{}"}, "payload is not valid JSON"),
        (
            {"payload": b'"' + b"x" * 2_000_000 + b'"'},
            "payload is 2000002 bytes, over the 1048576-byte limit",
        ),
        (
            {"aggregate_type": "order lines"},
            "topic 'outbox.event.order lines' is not a legal Kafka topic name",
        ),
        ({"topic": "a/b"}, "topic 'a/b' is not a legal Kafka topic name"),
        ({"headers": "[1]"}, "headers column must be a JSON object of string values"),
        ({"headers": '{"id": "x"}'}, "headers column may not set the reserved header 'id'"),
        ({"headers": '{"n": 1}'}, "header 'n' must be a string, got int"),
        ({"headers": "{oops"}, "headers column is not valid JSON"),
    ],
)
def test_invalid_events_say_why(change: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        encode(dataclasses.replace(RECORD, **change), SETTINGS)  # type: ignore[arg-type]
    assert str(err.value).startswith(reason)


def test_json_check_can_be_turned_off() -> None:
    assert (
        encode(
            dataclasses.replace(RECORD, payload=b"\x00binary"),
            dataclasses.replace(SETTINGS, require_json=False),
        ).value
        == b"\x00binary"
    )


# --- text columns holding any bytes (the store decodes them losslessly: rowtext.py) ----------

UTF8MB4 = ("aggregate_type", "aggregate_id", "event_type", "headers")
ASCII = ("event_id", "topic")
# The shapes of bytes that are not text, and valid text around them.
NOT_TEXT = st.sampled_from(
    [
        b"\xff",
        b"\x80",
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xed\xa0\x80",
        b"\xed\xa0\xbd\xed\xb8\x80",
        b"\xf8\x88\x80\x80\x80",
    ]
)
ANY_BYTES = st.one_of(
    st.binary(max_size=40), st.tuples(st.binary(max_size=8), NOT_TEXT, st.binary(max_size=8)).map(b"".join)
)


def _valid(column: str, data: bytes) -> bool:
    if column in ASCII:
        return data.isascii()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(column=st.sampled_from(UTF8MB4 + ASCII), data=ANY_BYTES)
def test_a_column_that_is_not_text_is_refused_by_name_and_nothing_is_sent_lossy(
    column: str, data: bytes
) -> None:
    """Whatever bytes a text column holds: encode refuses the row with a reason naming the column
    exactly when they are not text of its character set; what it sends is the bytes stored."""
    value = decode(data)
    if column == "headers":  # a JSON object holding the bytes
        value = decode(b'{"h": "' + data.replace(b"\\", b"").replace(b'"', b"") + b'"}')
    elif column == "topic":
        value = decode(b"t." + data)
    changes: dict[str, Any] = {column: value}
    record = dataclasses.replace(RECORD, **changes)
    stored = raw(value)
    if not _valid(column, stored):
        with pytest.raises(InvalidEvent, match=f"^{column} is not "):
            encode(record, SETTINGS)
        return
    try:
        message = encode(record, SETTINGS)
    except InvalidEvent as exc:  # valid text may still break another rule (JSON, topic name)
        assert not str(exc).startswith(f"{column} is not "), exc
        return
    sent = {
        "aggregate_id": message.key,
        "event_id": dict(message.headers)["id"],
        "event_type": dict(message.headers)["event_type"],
        "aggregate_type": dict(message.headers)["aggregate_type"],
        "topic": message.topic.encode(),
    }
    if column in sent:
        assert sent[column] == stored


@given(data=st.tuples(*[ANY_BYTES] * 5))
def test_the_dead_letter_of_such_a_row_is_legal_for_sqs_and_names_the_bytes_stored(
    data: tuple[bytes, bytes, bytes, bytes, bytes],
) -> None:
    event_id, aggregate_type, aggregate_id, event_type, headers = (decode(d) for d in data)
    record = dataclasses.replace(
        RECORD,
        event_id=event_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        headers=headers,
    )
    try:
        encode(record, SETTINGS)
        reason = "published"
    except InvalidEvent as exc:
        reason = str(exc)
    body = dead_letter_body(DeadLetter(record, reason, None), MIN_MESSAGE_BYTES * 4)
    assert sqs_accepts(body, MIN_MESSAGE_BYTES * 4), body
    letter = json.loads(body)
    for name, original in zip(
        ("event_id", "aggregate_type", "aggregate_id", "event_type"), data, strict=False
    ):
        if name not in letter.get("truncated", {}):
            assert raw(letter[name]) == original
    assert shown(reason).encode("utf-8")  # storable as last_error, printable


@given(data=st.binary(max_size=60), other=st.binary(max_size=60))
def test_decoding_is_lossless_one_to_one_and_always_shown_as_valid_text(data: bytes, other: bytes) -> None:
    assert raw(decode(data)) == data
    assert (decode(data) == decode(other)) == (data == other)
    shown(decode(data)).encode("utf-8")
    assert shown(decode(data)) == data.decode("utf-8", "backslashreplace")
