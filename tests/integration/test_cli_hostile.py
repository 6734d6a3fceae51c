"""The operator commands on a real database: the database-only commands need no Kafka or
dead-letter queue settings; a closed pipe or Ctrl-C ends a command quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

from outbox_relay import admin_mysql
from outbox_relay.cli_common import DONE, FAILED, dead_letter_queue
from outbox_relay.config import ConfigError
from tests import support
from tests.unit.hostile import check, run


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


@pytest.mark.parametrize("unbuffered", ["", "1"])  # a print fails, or the flush at the end
def test_a_closed_pipe_ends_status_quietly(outbox: support.Database, unbuffered: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env |= {**_env(outbox), "PYTHONUNBUFFERED": unbuffered}
    read, write = os.pipe()
    os.close(read)  # `outbox-relay status | head -1`, the reader gone before the first byte
    try:
        command = subprocess.run(
            [sys.executable, "-m", "outbox_relay.cli", "status"],
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (command.returncode, command.stderr) == (0, "")


def test_ctrl_c_in_the_janitor_says_what_it_deleted(
    database: support.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    database.insert(support.backlog(3, 1))
    database.query("UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6) - INTERVAL 2 DAY")

    def interrupt(_: float) -> None:  # the pause after the first full batch
        raise KeyboardInterrupt

    monkeypatch.setattr(admin_mysql, "time", SimpleNamespace(monotonic=time.monotonic, sleep=interrupt))
    outcome = run(["janitor"], _env(database, OUTBOX_JANITOR_BATCH_SIZE="1"))
    check(outcome, lambda code: code == FAILED)
    # Shards without rows count as batches too.
    assert re.fullmatch(
        r"outbox-relay janitor: interrupted: 1 published and 0 dead row\(s\) deleted in \d+ batch\(es\)\n",
        outcome.err,
    ), outcome.err
    assert database.status_counts() == {"PUBLISHED": 2}
