"""The message contract: topic routing, key, value bytes as stored, headers."""

from __future__ import annotations

import dataclasses

import pytest

from outbox_relay.config import RelaySettings
from outbox_relay.messages import InvalidEvent, encode, topic_for
from outbox_relay.model import OutboxRecord

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
