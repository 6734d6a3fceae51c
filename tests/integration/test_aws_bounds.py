"""Guarantee: a stalled dependency (SQS, Secrets Manager) delays only what needs it, and every AWS
call is bounded by the run's deadline.  A dead-letter outage is nobody's fault: the poison rows
back off with no attempt charged and every other row is published in the same run.

The AWS endpoints are pointed (boto3's own ``AWS_ENDPOINT_URL_SQS`` and
``AWS_ENDPOINT_URL_SECRETS_MANAGER``) at a proxy in front of moto that can stall: it accepts the
connection and never answers, as an endpoint without a route back does."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import pytest

from outbox_relay import aws_clients, dead_letters
from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.model import DeadLetter, Delivery
from outbox_relay.ports import Acknowledged, DeadLetterQueueDown, NullMetrics, SystemClock
from outbox_relay.relay import Relay
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore
from tests import support
from tests.conftest import make_topics
from tests.integration.test_relay_rules import ScriptedPublisher

MOTO_ADDRESS = ("127.0.0.1", 5000)


@pytest.fixture
def proxy() -> Iterator[support.DelayProxy]:
    """moto behind a proxy that hangs (accepts, reads, never answers) until ``stall`` is unset."""
    p = support.DelayProxy(port=0, upstream=MOTO_ADDRESS)
    p.stall = True
    yield p
    p.close()


def _timed(invoke: Any, timeout: float, event: Any = None, **env: str) -> tuple[dict[str, Any], float]:
    """The handler's answer to an invocation of ``timeout`` seconds, and how long it took."""
    started = time.monotonic()
    result: dict[str, Any] = invoke(event, timeout=timeout, **env)
    return result, time.monotonic() - started


def _by_aggregate(database: support.Database) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in database.rows():
        out.setdefault(row["aggregate_id"], []).append(row)
    return out


def _wait_until_due(database: support.Database, timeout: float = 15.0) -> None:
    assert support.wait_until(lambda: not any(r["backing_off"] for r in database.rows()), timeout)


def test_a_stalled_dead_letter_queue_backs_off_only_the_poison_rows_uncharged(
    database: support.Database,
    topics: support.Topics,
    dlq: support.Queue,
    invoke: Any,
    proxy: support.DelayProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pause after an outage outlives the run (the warm process keeps it); shortened here.
    monkeypatch.setattr(dead_letters, "DEAD_LETTER_PAUSE_SECONDS", 4.0)
    make_topics(topics, "order")
    good = support.backlog(48, 8)
    poison = [
        support.Event("order", "poison-json", "Broken", b"{not json", seq=1),
        support.Event("order", "poison-big", "Huge", b'{"x": "' + b"a" * 5000 + b'"}', seq=1),
    ]
    # Poison early and late: several passes (batch of 8) follow the first dead-letter attempt.
    database.insert([*good[:4], poison[0], *good[4:40], poison[1], *good[40:]])
    env = {
        "AWS_ENDPOINT_URL_SQS": proxy.url,
        "OUTBOX_BATCH_SIZE": "8",
        "OUTBOX_MAX_MESSAGE_BYTES": "4096",
        "OUTBOX_BACKOFF_BASE_SECONDS": "2",
    }

    first, seconds = _timed(invoke, 10, **env)

    assert seconds < 9.5, f"the run outlived its deadline (10 s less the 1 s stop margin): {seconds:.1f} s"
    assert first["ok"] and first["published"] == 48 and first["dead_lettered"] == 0, first
    assert first["retried"] == 2 and first["pending"] == 2, first
    # One bounded send (its tries), then dead letters paused for the run: the second poison row
    # never waited on the queue.
    assert 1 <= proxy.accepted <= aws_clients.SQS.attempts, proxy.accepted
    rows = _by_aggregate(database)
    for aggregate_id in ("poison-json", "poison-big"):
        (row,) = rows.pop(aggregate_id)
        assert row["status"] == "PENDING" and row["attempts"] == 0, "an outage is no attempt"
        assert row["backing_off"], "the queue is not tried again at once"
        assert row["last_error"].startswith("dead-letter queue: "), row["last_error"]
    assert all(r["status"] == "PUBLISHED" for same in rows.values() for r in same)
    delivered = support.Delivered(topics.read("order"))
    published = {r[0] for r in database.query("SELECT event_id FROM outbox WHERE status = 'PUBLISHED'")}
    assert set(delivered.copies()) == published and delivered.order_violations() == 0
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in delivered.last_copy_sequences().values())

    # The queue answers again, but the pause carries over to the next invocation of the warm
    # process: the rows stay backed off, and the queue is not asked.
    proxy.stall = False
    accepted = proxy.accepted
    _wait_until_due(database)
    paused, _ = _timed(invoke, 10, **env)
    assert paused["ok"] and paused["dead_lettered"] == 0 and paused["pending"] == 2, paused
    assert proxy.accepted == accepted, "no send while paused"
    assert all("paused after" in r["last_error"] for r in database.rows() if r["status"] == "PENDING")

    # The pause over, the next run dead-letters both, once they are due.
    time.sleep(4.0)
    _wait_until_due(database)
    second, _ = _timed(invoke, 10, **env)

    assert second["ok"] and second["dead_lettered"] == 2 and second["pending"] == 0, second
    dead = {r["aggregate_id"]: r for r in database.rows() if r["status"] == "DEAD"}
    assert set(dead) == {"poison-json", "poison-big"}
    assert all(r["attempts"] == 0 for r in dead.values())
    letters = {m["aggregate_id"]: m for m in dlq.messages()}
    assert set(letters) == set(dead)
    for aggregate_id, letter in letters.items():
        assert letter["event_id"] == dead[aggregate_id]["event_id"]
        assert letter["reason"] == dead[aggregate_id]["last_error"]
    assert "not valid JSON" in letters["poison-json"]["reason"]
    assert "over the 4096-byte limit" in letters["poison-big"]["reason"]


def test_a_dead_letter_send_is_cut_at_the_run_deadline(
    database: support.Database, topics: support.Topics, invoke: Any, proxy: support.DelayProxy
) -> None:
    # The SQS client's own bounds (two tries of 3 s) outlast this invocation: the deadline cuts.
    assert aws_clients.SQS.attempts * aws_clients.SQS.read_timeout > 4
    make_topics(topics, "order")
    database.insert([*support.backlog(20, 4), support.Event("order", "poison", "Broken", b"{not json")])

    result, seconds = _timed(invoke, 4, AWS_ENDPOINT_URL_SQS=proxy.url)

    assert seconds < 3.5, f"past the run's deadline (4 s less the 1 s stop margin): {seconds:.1f} s"
    assert result["ok"] and result["published"] == 20 and result["retried"] == 1, result
    (row,) = _by_aggregate(database)["poison"]
    assert row["status"] == "PENDING" and row["attempts"] == 0 and row["backing_off"]
    assert "no answer within" in row["last_error"] and "the run's deadline" in row["last_error"]


def _secret_behind(proxy: support.DelayProxy) -> tuple[str, dict[str, str]]:
    """A database secret in moto, and the environment that reads it through ``proxy``."""
    sm = boto3.client("secretsmanager", endpoint_url=support.MOTO)
    arn = sm.create_secret(
        Name=f"db-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps({"username": support.DB_USER, "password": support.DB_PASSWORD}),
    )["ARN"]
    env = {
        "OUTBOX_DB_PASSWORD": "",
        "OUTBOX_DB_SECRET_ARN": arn,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url,
    }
    return arn, env


def test_a_stalled_secrets_manager_is_one_line_within_the_deadline(
    database: support.Database, invoke: Any, proxy: support.DelayProxy
) -> None:
    database.insert(support.backlog(6, 2))
    arn, env = _secret_behind(proxy)

    result, seconds = _timed(invoke, 10, **env)

    assert seconds < aws_clients.SECRETS_MANAGER.worst_case_seconds() + 1.0 < 9.0, seconds
    assert result["ok"] is False and result["stopped_by"] == "database_unavailable", result
    assert f"cannot read secret {arn}" in result["error"] and "timeout" in result["error"].lower()
    assert "\n" not in result["error"]
    assert all(r["status"] == "PENDING" and r["attempts"] == 0 for r in database.rows())

    # A failed read is not cached: once Secrets Manager answers, the next invocation gets in.
    proxy.stall = False
    status, _ = _timed(invoke, 10, {"action": "status"}, **env)
    assert status["ok"] and status["pending"] == 6, status


def test_a_stalled_secret_read_ends_with_the_runs_deadline_not_the_clients_bounds(
    database: support.Database, invoke: Any, proxy: support.DelayProxy
) -> None:
    """The client's own bounds (two tries, ~7 s; twice that with the refetch after an access
    denied) outlast a 3 s invocation: the read is waited for until the deadline only."""
    assert aws_clients.SECRETS_MANAGER.worst_case_seconds() > 3
    arn, env = _secret_behind(proxy)

    result, seconds = _timed(invoke, 3, **env)

    assert seconds < 3.0, f"past the invocation's 3 s: {seconds:.1f} s"
    assert result["ok"] is False and result["stopped_by"] == "database_unavailable", result
    assert f"cannot read secret {arn}" in result["error"] and "the run's deadline" in result["error"]


# --- the relay core's bound, with a sink of the test's own ----------------------------------


class BlockedSink:
    """A dead-letter queue that never answers (until the test ends)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        self.calls += 1
        self.release.wait(60)
        return [None] * len(letters)


class RefusingSink:
    """A dead-letter queue that refuses every call after a short wait (as SQS answers a role
    without sqs:SendMessage)."""

    def __init__(self) -> None:
        self.calls = 0

    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        self.calls += 1
        time.sleep(0.2)
        raise DeadLetterQueueDown("AccessDenied: not allowed", ["not sent"] * len(letters))


def _relay(env: dict[str, str], sink: Any, **settings: Any) -> Relay:
    config = load_config(env)
    store = MySQLOutboxStore(connector(config.database), OutboxSql())
    publisher = ScriptedPublisher(lambda m: Delivery.DELIVERED)
    relay_settings = dataclasses.replace(config.relay, **settings)
    return Relay(store, publisher, sink, NullMetrics(), SystemClock(), relay_settings, "t", random.Random(3))


def test_the_core_stops_waiting_for_the_dead_letter_queue_at_the_deadline(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    database.insert([support.Event("order", "poison", "e", b"not json"), *support.backlog(10, 3)])
    sink = BlockedSink()
    try:
        started = time.monotonic()
        summary = _relay(relay_env, sink).run(started + 1.5)
        seconds = time.monotonic() - started
    finally:
        sink.release.set()

    assert seconds < 1.5, seconds
    assert (summary.published, summary.retried, summary.dead_lettered) == (10, 1, 0)
    (row,) = _by_aggregate(database)["poison"]
    assert row["status"] == "PENDING" and row["attempts"] == 0 and row["backing_off"]


def test_a_failed_dead_letter_send_pauses_dead_letters_for_the_rest_of_the_run(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    rows = support.backlog(30, 6)
    for n in (25, 15, 5):  # poison rows of their own aggregates, spread over the passes
        rows.insert(n, support.Event("order", f"poison-{n}", "e", b"not json"))
    database.insert(rows)
    sink = RefusingSink()

    summary = _relay(relay_env, sink, batch_size=4).run(time.monotonic() + 20)

    assert sink.calls == 1, "one failed send, then no more for the run"
    assert (summary.published, summary.retried, summary.dead_lettered) == (30, 3, 0)
    poisoned = [r for r in database.rows() if r["aggregate_id"].startswith("poison-")]
    assert len(poisoned) == 3
    for row in poisoned:
        assert row["status"] == "PENDING" and row["attempts"] == 0 and row["backing_off"]
        assert row["last_error"] in (
            "dead-letter queue: AccessDenied: not allowed",
            "dead-letter queue: paused after: AccessDenied: not allowed",
        )
