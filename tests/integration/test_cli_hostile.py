"""Hostile option values on a real database: status, dry-run, janitor and invoke answer with an
exit status and at most one line, and change nothing; the database-only commands need no Kafka
or dead-letter queue settings; a closed pipe or Ctrl-C ends a command quietly."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay import admin_mysql
from outbox_relay.cli_common import DONE, FAILED, USAGE, dead_letter_queue, seconds
from outbox_relay.config import ConfigError
from tests import support
from tests.unit.hostile import NUMERIC_OPTIONS, check, option_values, run

ON_A_DATABASE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


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


DATABASE_OPTIONS = [o for o in NUMERIC_OPTIONS if o[0] != "invoke"]


def _refused_by(parse: Any) -> Any:
    def refused(text: str) -> bool:
        try:
            parse(text)
        except argparse.ArgumentTypeError:
            return True
        return False

    return refused


@ON_A_DATABASE
@given(st.sampled_from(DATABASE_OPTIONS), option_values)
def test_hostile_values_on_a_database_end_in_an_exit_status_and_change_nothing(
    outbox: support.Database, option: tuple[str, str], value: str
) -> None:
    before = _snapshot(outbox)
    outcome = run([option[0], f"{option[1]}={value}"], _env(outbox))
    check(outcome, lambda code: code in (DONE, USAGE))
    assert _snapshot(outbox) == before


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(option_values.filter(_refused_by(seconds(1, 900))))
def test_invoke_refuses_a_hostile_timeout_before_running(
    outbox: support.Database, relay_env: dict[str, str], value: str
) -> None:
    before = _snapshot(outbox)
    outcome = run(["invoke", f"--timeout={value}"], relay_env)
    check(outcome, lambda code: code == USAGE)
    assert _snapshot(outbox) == before


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
    assert queue.queue_url == dlq.url and queue.scan(10, time.monotonic() + 5) == []


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
