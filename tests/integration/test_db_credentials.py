"""Database credential rotation in a warm process (issue 10, item 1): the secret's ``username``
wins over OUTBOX_DB_USER, and access denied re-reads the secret once, past Powertools' cache.

Each test makes MariaDB users of its own (what the relay needs on the test database, nothing
more), as root over the local stack's socket: the ``relay`` user cannot grant.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import boto3
import pymysql
import pytest

from outbox_relay import runtime
from tests import support
from tests.conftest import make_topics

# scripts/local-stack (MYSQL_SOCKET): root logs in there by unix_socket authentication.
ROOT_SOCKET = "/run/mysqld/outbox-relay.sock"
# A TCP login from 127.0.0.1 may match either host (name resolution is on), like the relay user's.
HOSTS = ("127.0.0.1", "localhost")


def root_connect() -> pymysql.connections.Connection[Any]:
    return pymysql.connect(unix_socket=ROOT_SOCKET, user="root", autocommit=True)


@dataclass
class DbUsers:
    """MariaDB users made for one test, with the relay's grants on its database; all dropped by
    :meth:`drop_all`.  They have no READ_ONLY ADMIN, so ``read_only`` applies to them."""

    database: str
    made: list[str] = field(default_factory=list)

    def _admin(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        with root_connect() as conn, conn.cursor() as cur:
            for sql, params in statements:
                cur.execute(sql, params)

    def create(self, password: str, name: str | None = None) -> str:
        name = name or f"relay_{uuid.uuid4().hex[:10]}"
        self.made.append(name)
        for host in HOSTS:
            self._admin(
                ("CREATE USER %s@%s IDENTIFIED BY %s", (name, host, password)),
                (f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{self.database}`.* TO %s@%s", (name, host)),
            )
        return name

    def set_password(self, name: str, password: str) -> None:
        for host in HOSTS:
            self._admin(("ALTER USER %s@%s IDENTIFIED BY %s", (name, host, password)))

    def drop(self, name: str) -> None:
        for host in HOSTS:
            self._admin(("DROP USER IF EXISTS %s@%s", (name, host)))

    def sessions(self, name: str) -> set[int]:
        """Server connection ids logged in as ``name``."""
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (name,))
            return {int(row[0]) for row in cur.fetchall()}

    def kill_sessions(self, name: str) -> None:
        for session in self.sessions(name):
            with root_connect() as conn, conn.cursor() as cur, suppress(pymysql.err.OperationalError):
                cur.execute(f"KILL CONNECTION {session}")  # unless it is already gone
        assert support.wait_until(lambda: not self.sessions(name), timeout=5)

    def drop_all(self) -> None:
        for name in self.made:
            self.kill_sessions(name)
            self.drop(name)


def forget_runtime() -> None:
    """Close the cached runtime, whose warm connections log in as this test's users."""
    if runtime._current is not None:
        runtime._current.close()
        runtime._current = None


@pytest.fixture
def db_users(database: support.Database) -> Iterator[DbUsers]:
    users = DbUsers(database.name)
    yield users
    forget_runtime()
    users.drop_all()


@pytest.fixture
def secret_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every secret read of the runtimes built from now on, as its ``fresh`` flag (True: past
    Powertools' cache)."""
    reads: list[bool] = []
    real = runtime.read_secret

    def spy(arn: str, fresh: bool = False) -> str:
        reads.append(fresh)
        return real(arn, fresh)

    monkeypatch.setattr(runtime, "read_secret", spy)
    return reads


def new_secret(value: dict[str, str]) -> str:
    sm = boto3.client("secretsmanager", endpoint_url=support.MOTO)
    return sm.create_secret(Name=f"db-{uuid.uuid4().hex[:8]}", SecretString=json.dumps(value))["ARN"]


def put_secret(arn: str, value: dict[str, str]) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=support.MOTO)
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps(value))


def test_a_rotated_password_is_picked_up_by_a_warm_process(
    database: support.Database,
    topics: support.Topics,
    invoke: Any,
    db_users: DbUsers,
    secret_reads: list[bool],
) -> None:
    make_topics(topics, "order")
    user = db_users.create("p1")
    arn = new_secret({"username": user, "password": "p1"})
    # OUTBOX_DB_USER stays `relay`: the secret's username wins.
    env = {"OUTBOX_DB_PASSWORD": "", "OUTBOX_DB_SECRET_ARN": arn}
    database.insert(support.backlog(20, 4))

    first = invoke(**env)
    warm, before = runtime._current, db_users.sessions(user)

    assert first["ok"] and first["published"] == 20, first
    assert before, "the relay is connected as the secret's user"
    # Single-user rotation: the password changes in the database and then in the secret, while
    # Powertools still holds the old value for up to 5 minutes.
    db_users.set_password(user, "p2")
    put_secret(arn, {"username": user, "password": "p2"})
    db_users.kill_sessions(user)  # a warm session would keep working: RDS does not end them
    database.insert(support.backlog(15, 3, rng=random.Random(8)))
    secret_reads.clear()

    second = invoke(**env)

    assert second["ok"] and second["published"] == 15, second
    assert runtime._current is warm, "the same warm runtime"
    assert secret_reads.count(True) == 1, f"one read past the cache, then the cache has p2: {secret_reads}"
    after = db_users.sessions(user)
    assert after and not after & before
    assert database.status_counts() == {"PUBLISHED": 35}


def test_alternating_users_rotation_switches_the_user_of_a_warm_process(
    database: support.Database,
    topics: support.Topics,
    invoke: Any,
    db_users: DbUsers,
    secret_reads: list[bool],
) -> None:
    make_topics(topics, "order")
    user = db_users.create("pa")
    arn = new_secret({"username": user, "password": "pa"})
    env = {"OUTBOX_DB_PASSWORD": "", "OUTBOX_DB_SECRET_ARN": arn}
    database.insert(support.backlog(10, 2))
    assert invoke(**env)["published"] == 10
    assert db_users.sessions(user)

    # Alternating users: the secret moves to the clone.  Dropping the first user (and ending its
    # sessions) proves the next run cannot be using it.
    clone = db_users.create("pb", name=f"{user}_clone")
    put_secret(arn, {"username": clone, "password": "pb"})
    db_users.kill_sessions(user)
    db_users.drop(user)
    database.insert(support.backlog(10, 2, rng=random.Random(8)))
    secret_reads.clear()

    result = invoke(**env)

    assert result["ok"] and result["published"] == 10, result
    assert secret_reads.count(True) == 1, secret_reads
    assert db_users.sessions(clone) and not db_users.sessions(user)
    assert database.status_counts() == {"PUBLISHED": 20}


def test_access_still_denied_after_the_fresh_read_is_the_one_line_error(
    database: support.Database, invoke: Any, db_users: DbUsers, secret_reads: list[bool]
) -> None:
    user = db_users.create("right")
    arn = new_secret({"username": user, "password": "wrong"})
    database.insert(support.backlog(3, 1))

    result = invoke(OUTBOX_DB_PASSWORD="", OUTBOX_DB_SECRET_ARN=arn)

    assert result["ok"] is False and result["stopped_by"] == "database_unavailable", result
    assert result["error"].startswith("database error: acquire shards: (1045) Access denied for user")
    assert f"'{user}'" in result["error"] and "\n" not in result["error"]
    assert secret_reads == [False, True], "one read past the cache, no more"
    assert database.status_counts() == {"PENDING": 3}
