"""Bad manual payloads and malformed configuration: one clear error line each, nothing touched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import support

BAD_PAYLOADS = [
    (
        {"batchsize": 10},
        "unknown field 'batchsize' (allowed: batch_size, dry_run, max_events, poll_window_seconds)",
    ),
    ({"action": "drop"}, "action must be one of relay, janitor, status, redrive, got 'drop'"),
    ({"action": "redrive", "ids": ["7"]}, "redrive needs ids, a non-empty list of outbox ids"),
    ({"batch_size": "10"}, "batch_size must be an integer from 1 to 10000, got '10'"),
    ({"batch_size": True}, "batch_size must be an integer from 1 to 10000, got True"),
    ({"batch_size": 0}, "batch_size must be an integer from 1 to 10000, got 0"),
    ({"max_events": -5}, "max_events must be a positive integer, got -5"),
    ({"dry_run": "yes"}, "dry_run must be true or false, got 'yes'"),
    ([1, 2], "expected a JSON object, got list"),
    ("run", "expected a JSON object, got str"),
]

BAD_CONFIG = [
    ({"OUTBOX_BATCH_SIZE": "abc"}, "OUTBOX_BATCH_SIZE='abc' is not an integer"),
    (
        {"OUTBOX_TABLE": "outbox; DROP TABLE x"},
        "OUTBOX_TABLE='outbox; DROP TABLE x' is not a plain table name",
    ),
    (
        {"KAFKA_SECURITY_PROTOCOL": "TLS"},
        "KAFKA_SECURITY_PROTOCOL='TLS' is not one of PLAINTEXT, SSL, SASL_SSL",
    ),
    (
        {"OUTBOX_TOPIC_TEMPLATE": "{aggregate}.events"},
        "OUTBOX_TOPIC_TEMPLATE='{aggregate}.events' uses {aggregate}",
    ),
    ({"DLQ_QUEUE_URL": ""}, "DLQ_QUEUE_URL is required"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS entry 'localhost' is not host:port"),
    ({"OUTBOX_DB_PORT": "70000"}, "OUTBOX_DB_PORT='70000' is out of range [1, 65535]"),
    (
        {"KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
        "KAFKA_SASL_MECHANISM='OAUTHBEARER' needs KAFKA_SECURITY_PROTOCOL=SASL_SSL",
    ),
]


def _untouched(database: support.Database) -> None:
    assert database.status_counts() == {"PENDING": 3}
    assert database.query("SELECT COUNT(*) FROM outbox_shard WHERE lease_token IS NOT NULL OR fence > 0") == [
        (0,)
    ]


@pytest.mark.parametrize(("payload", "message"), BAD_PAYLOADS, ids=[json.dumps(p) for p, _ in BAD_PAYLOADS])
def test_bad_manual_payload_gives_one_clear_error_and_touches_nothing(
    database: support.Database, invoke: Any, payload: Any, message: str
) -> None:
    database.insert(support.backlog(3, 1))
    result = invoke(payload)
    assert result == {"ok": False, "error": f"invalid invocation payload: {message}"}
    _untouched(database)


@pytest.mark.parametrize(("env", "message"), BAD_CONFIG, ids=[next(iter(e)) for e, _ in BAD_CONFIG])
def test_malformed_configuration_gives_one_clear_error_and_touches_nothing(
    database: support.Database, invoke: Any, env: dict[str, str], message: str
) -> None:
    database.insert(support.backlog(3, 1))
    result = invoke(**env)
    assert result["ok"] is False and set(result) == {"ok", "error"}
    assert result["error"].startswith("invalid configuration: ") and message in result["error"]
    assert "\n" not in result["error"]
    _untouched(database)


def test_every_configuration_problem_is_reported_at_once(invoke: Any) -> None:
    result = invoke(OUTBOX_BATCH_SIZE="0", OUTBOX_MAX_ATTEMPTS="many", DLQ_QUEUE_URL=" ")
    assert result["error"] == (
        "invalid configuration: OUTBOX_BATCH_SIZE='0' is out of range [1, 10000]; "
        "OUTBOX_MAX_ATTEMPTS='many' is not an integer; DLQ_QUEUE_URL is required"
    )


def test_scheduled_event_from_events_dir_runs_the_relay(database: support.Database, invoke: Any) -> None:
    event = json.loads((support.ROOT / "events" / "scheduled.json").read_text())
    result = invoke(event)
    assert result["ok"] and result["published"] == 0 and result["stopped_by"] == "drained"
