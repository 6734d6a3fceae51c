"""The operator commands on a real database: the database-only commands need no Kafka or
dead-letter queue settings."""

from __future__ import annotations

from typing import Any

import pytest

from outbox_relay.cli_common import DONE, dead_letter_queue
from outbox_relay.config import ConfigError
from tests import support
from tests.unit.hostile import run


def _env(database: support.Database, **extra: str) -> dict[str, str]:
    """The database's settings only: no KAFKA_BOOTSTRAP_SERVERS, no DLQ_QUEUE_URL."""
    return {
        "OUTBOX_DB_HOST": support.DB_HOST,
        "OUTBOX_DB_PORT": str(support.DB_PORT),
        "OUTBOX_DB_NAME": database.name,
        "OUTBOX_DB_USER": support.DB_USER,
        "OUTBOX_DB_PASSWORD": support.DB_PASSWORD,
        **extra,
    }


def _snapshot(database: support.Database) -> tuple[Any, ...]:
    return (database.rows(), database.query("SELECT * FROM outbox_shard ORDER BY shard"))


@pytest.fixture
def outbox(database: support.Database) -> support.Database:
    """Pending rows, and a PUBLISHED and a DEAD row well inside their retention."""
    database.insert(support.backlog(20, 4))
    database.query("UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6) WHERE id = 1")
    database.query("UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) WHERE id = 2")
    return database


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["dry-run"], ["janitor"]])
def test_the_database_commands_need_no_kafka_or_dead_letter_queue_settings(
    outbox: support.Database, argv: list[str]
) -> None:
    before = _snapshot(outbox)
    outcome = run(argv, _env(outbox))
    assert (outcome.code, outcome.err) == (DONE, ""), outcome
    assert outcome.out
    assert _snapshot(outbox) == before


def test_the_dead_letter_queue_alone_needs_only_its_url(
    dlq: support.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OUTBOX_DB_HOST", "KAFKA_BOOTSTRAP_SERVERS", "DLQ_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="DLQ_QUEUE_URL is required"):
        dead_letter_queue()
    monkeypatch.setenv("AWS_ENDPOINT_URL", support.MOTO)
    monkeypatch.setenv("DLQ_QUEUE_URL", dlq.url)
    queue = dead_letter_queue()
    assert queue.queue_url == dlq.url and queue.receive(10) == []
