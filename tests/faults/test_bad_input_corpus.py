"""The bad-input corpus: every malformed payload, configuration or row gets one clear error or a
dead letter; never a crash, a crash loop or a lost row."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from outbox_relay.config import ConfigError, load_config
from outbox_relay.invocation import InvocationError, parse_invocation
from outbox_relay.sql import OutboxSql
from tests import support
from tests.conftest import make_topics

pytestmark = pytest.mark.stack

PAYLOADS: list[Any] = [
    None,
    0,
    "relay",
    [],
    [{"batch_size": 1}],
    {"batch_size": None},
    {"batch_size": 10**30},
    {"batch_size": -1},
    {"batch_size": 1.0},
    {"max_events": 0},
    {"max_events": "7"},
    {"dry_run": 1},
    {"dry_run": None},
    {"poll_window_seconds": -1},
    {"poll_window_seconds": "5"},
    {"poll_window_seconds": True},
    {"action": None},
    {"action": "RELAY"},
    {"action": ["status"]},
    {"action": "redrive"},
    {"action": "redrive", "ids": "1,2"},
    {"action": "redrive", "ids": [0]},
    {"action": "redrive", "ids": [True]},
    {"action": "status", "dry_run": True},
    {"action": "janitor", "ids": [1]},
    {"": 1},
    {"batch_size ": 5},
    {"Batch_Size": 5},
    {"batch_size": 5, "extra": {"nested": [1, 2]}},
]

CONFIGS: list[dict[str, str]] = [
    {"OUTBOX_BATCH_SIZE": "nan"},
    {"OUTBOX_BATCH_SIZE": "1e3"},
    {"OUTBOX_BATCH_SIZE": "-5"},
    {"OUTBOX_BACKOFF_BASE_SECONDS": "inf"},
    {"OUTBOX_BACKOFF_BASE_SECONDS": "nan"},
    {"OUTBOX_DB_PORT": "3306.5"},
    {"OUTBOX_DB_PORT": "\uff10"},
    {"OUTBOX_REQUIRE_JSON": "maybe"},
    {"OUTBOX_TABLE": "outbox`; DROP TABLE outbox; --"},
    {"OUTBOX_TABLE": "out box"},
    {"OUTBOX_TABLE": "1outbox"},
    {"OUTBOX_TABLE": "a" * 49},
    {"OUTBOX_TABLE": "outbox'"},
    {"OUTBOX_TOPIC_TEMPLATE": "{0}"},
    {"OUTBOX_TOPIC_TEMPLATE": "{aggregate_type.__class__}"},
    {"OUTBOX_TOPIC_TEMPLATE": "{"},
    {"KAFKA_BOOTSTRAP_SERVERS": ","},
    {"KAFKA_BOOTSTRAP_SERVERS": "host:port"},
    {"KAFKA_SECURITY_PROTOCOL": "plaintext"},
    {"KAFKA_SASL_MECHANISM": "PLAIN"},
    {"OUTBOX_DB_TLS": "yes"},
    {"OUTBOX_DB_TLS": "verify"},
    {"OUTBOX_DB_SSL_CA": "/does/not/exist.pem"},
    {"OUTBOX_RETENTION_SECONDS": "-1"},
    {"OUTBOX_POLL_INTERVAL_MS": "0"},
    {"OUTBOX_DB_HOST": "  "},
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=[json.dumps(p) for p in PAYLOADS])
def test_malformed_manual_payloads_are_refused_in_one_line(payload: Any) -> None:
    if payload is None or payload == {}:
        return  # None and {} are a plain manual run
    with pytest.raises(InvocationError) as err:
        parse_invocation(payload)
    assert str(err.value).startswith("invalid invocation payload: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("override", CONFIGS, ids=[json.dumps(c) for c in CONFIGS])
def test_malformed_configuration_is_refused_in_one_line(
    relay_env: dict[str, str], override: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({**relay_env, **override})
    text = str(err.value)
    assert text.startswith("invalid configuration: ") and "\n" not in text
    assert next(iter(override)) in text or "OUTBOX_DB_SSL_CA" in text


@pytest.mark.parametrize("table", ["outbox`x", "outbox;", "o-b", "outbox\n", "ö"])
def test_sql_special_table_names_never_reach_sql(table: str) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        OutboxSql(table)


ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("binary payload", {"payload": bytes(range(256))}, "payload is not valid JSON"),
    ("latin-1 bytes", {"payload": '{"name": "José"}'.encode("latin-1")}, "payload is not valid JSON"),
    ("empty payload", {"payload": b""}, "payload is not valid JSON"),
    ("NUL in payload", {"payload": b'{"a": "\x00"}'}, "payload is not valid JSON"),
    ("oversized payload", {"payload": b'"' + b"z" * 1_100_000 + b'"'}, "over the 1048576-byte limit"),
    ("topic with SQL", {"topic": "t'; DROP TABLE outbox; --"}, "is not a legal Kafka topic name"),
    ("topic '..'", {"topic": ".."}, "is not a legal Kafka topic name"),
    ("aggregate type with spaces", {"aggregate_type": "order lines"}, "is not a legal Kafka topic name"),
    ("aggregate type with quote", {"aggregate_type": "o'); --"}, "is not a legal Kafka topic name"),
    ("headers not JSON", {"headers": "{'a': 1}"}, "headers column is not valid JSON"),
    ("headers a list", {"headers": '["a"]'}, "headers column must be a JSON object"),
    ("header reserved", {"headers": '{"aggregate_type": "x"}'}, "reserved header 'aggregate_type'"),
    ("header number", {"headers": '{"n": 5}'}, "header 'n' must be a string"),
    # Bytes that are not text of the column's character set, as MariaDB stores them (a `_binary`
    # literal: PyMySQL's for bytes): UTF-8-encoded surrogates in utf8mb4, any byte in ascii.
    (
        "CESU-8 aggregate id",
        {"aggregate_id": b"bad-\xed\xa0\xbd\xed\xb8\x80"},
        "aggregate_id is not valid UTF-8",
    ),
    (
        "surrogate aggregate type",
        {"aggregate_type": b"order\xed\xa0\x80"},
        "aggregate_type is not valid UTF-8",
    ),
    ("surrogate event type", {"event_type": b"E\xed\xbf\xbf"}, "event_type is not valid UTF-8"),
    ("surrogate in headers", {"headers": b'{"t": "\xed\xa0\x80"}'}, "headers is not valid UTF-8"),
    ("0xFF in event id", {"event_id": b"ev-\xff"}, "event_id is not ASCII"),
    ("UTF-8 in event id", {"event_id": "ev-é".encode()}, "event_id is not ASCII"),
    ("overlong in topic", {"topic": b"t\xc0\xaf"}, "topic is not ASCII"),
]

ODD_BUT_VALID: list[tuple[str, dict[str, Any]]] = [
    ("unicode aggregate", {"aggregate_id": "客户-🚀-ü", "payload": '{"name": "Zoë 🚀"}'.encode()}),
    ("quotes and backslashes", {"aggregate_id": "a'\"\\b", "event_type": "Odd\"Type'\\"}),
    ("NUL in aggregate id", {"aggregate_id": "a\x00b"}),
    ("NUL in event id", {"event_id": b"ev-\x00"}),
    ("255-char aggregate id", {"aggregate_id": "k" * 255}),
    ("JSON scalar payload", {"payload": b"42"}),
    ("NULL optional columns", {"topic": None, "headers": None, "seq": None}),
    ("empty headers object", {"headers": "{}"}),
]


def _insert(database: support.Database, **columns: Any) -> int:
    row = {"aggregate_type": "order", "aggregate_id": "k", "event_type": "E", "payload": b"{}", **columns}
    names = ", ".join(row)
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO outbox ({names}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values())
        )
        return int(cur.lastrowid)


def test_bad_rows_are_dead_lettered_odd_ones_published_and_nothing_is_lost(
    database: support.Database, topics: support.Topics, dlq: support.Queue, invoke: Any
) -> None:
    make_topics(topics, "order")
    bad = {
        _insert(database, **{"aggregate_id": f"bad-{n}", **cols}): (name, why)
        for n, (name, cols, why) in enumerate(ROWS)
    }
    odd = {_insert(database, **cols): name for name, cols in ODD_BUT_VALID}
    good = [_insert(database, aggregate_id=f"good-{n}", payload=b'{"n": %d}' % n) for n in range(20)]

    first = invoke()
    again = invoke()

    assert first["ok"] and again["ok"], (first, again)
    assert again["published"] == 0 and again["dead_lettered"] == 0, "no crash loop: nothing left to retry"
    rows = {r["id"]: r for r in database.rows()}
    for row_id, (name, why) in bad.items():
        assert rows[row_id]["status"] == "DEAD", name
        assert why in rows[row_id]["last_error"], (name, rows[row_id]["last_error"])
    for row_id in [*odd, *good]:
        assert rows[row_id]["status"] == "PUBLISHED", odd.get(row_id, row_id)
    letters = {m["outbox_id"]: m for m in dlq.messages()}
    assert set(letters) == set(bad)
    binary = letters[next(i for i, (name, _) in bad.items() if name == "binary payload")]
    assert base64.b64decode(binary["payload_base64"]) == bytes(range(256))
    records = topics.read("order")
    published = {r[0] for r in database.query("SELECT event_id FROM outbox WHERE status = 'PUBLISHED'")}
    assert {r.headers["id"].decode() for r in records} == published
    keys = {r.key for r in records}
    assert "客户-🚀-ü".encode() in keys and b"a\x00b" in keys
