"""Fixtures.  Tests marked ``stack`` run against the real local stack, which
``scripts/local-stack up`` starts (idempotently) once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Fake credentials before boto3 is used anywhere: only moto on 127.0.0.1 is ever called.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from outbox_relay.kafka_tools import ensure_topics
from outbox_relay.migrate import apply, discover
from outbox_relay.sql import OutboxSql
from tests import support


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def local_stack() -> None:
    support.stack("up")


@pytest.fixture
def database(local_stack: None) -> Iterator[support.Database]:
    """A fresh database with the migrations applied; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    with support.connect(name) as conn:
        apply(conn, OutboxSql("outbox"), discover(support.MIGRATIONS), lambda _line: None)
    yield support.Database(name)
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def topics(local_stack: None) -> support.Topics:
    """A topic namespace of this test's own (template ``<prefix>.{aggregate_type}``)."""
    return support.Topics(prefix=f"t{uuid.uuid4().hex[:10]}")


def make_topics(space: support.Topics, *aggregate_types: str, **configs: str) -> None:
    names = [space.name(t) for t in aggregate_types]
    ensure_topics([support.KAFKA], names, partitions=3, configs=configs or None)
    space.created.update(names)


@pytest.fixture
def dlq(local_stack: None) -> support.Queue:
    return support.new_queue()


@pytest.fixture
def relay_env(database: support.Database, topics: support.Topics, dlq: support.Queue) -> dict[str, str]:
    """The environment a deployed function would have, pointed at this test's resources."""
    return {
        "OUTBOX_DB_HOST": support.DB_HOST,
        "OUTBOX_DB_PORT": str(support.DB_PORT),
        "OUTBOX_DB_NAME": database.name,
        "OUTBOX_DB_USER": support.DB_USER,
        "OUTBOX_DB_PASSWORD": support.DB_PASSWORD,
        "KAFKA_BOOTSTRAP_SERVERS": support.KAFKA,
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "OUTBOX_TOPIC_TEMPLATE": topics.template,
        "DLQ_QUEUE_URL": dlq.url,
        "AWS_ENDPOINT_URL": support.MOTO,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "OUTBOX_LEASE_MARGIN_SECONDS": "2",
    }


@pytest.fixture
def invoke(relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call the real Lambda handler (decorators and all) with this test's environment."""
    from outbox_relay.cli import LocalContext
    from outbox_relay.handler import lambda_handler

    extra: set[str] = set()

    def call(event: Any = None, timeout: float = 60.0, **env: str) -> dict[str, Any]:
        for key in extra - set(env) - set(relay_env):  # one call's overrides do not leak into the next
            monkeypatch.delenv(key, raising=False)
        extra.update(env)
        for key, value in {**relay_env, **env}.items():
            monkeypatch.setenv(key, value)
        result: dict[str, Any] = lambda_handler({} if event is None else event, LocalContext(timeout))
        return result

    return call
