"""An Aurora failover as the relay sees it (issue 10, item 4): its server stops taking writes in
the middle of a run.  The relay must leave that server (close the connection, so the next one
resolves the endpoint again), stop the run with one line, lose and charge nothing, and relay
everything once a writer answers again, in the same warm process.

MariaDB stands in for the demoted writer with ``SET GLOBAL read_only = ON``, which binds users
without READ_ONLY ADMIN only: the relay runs as a user of its own (test_db_credentials.DbUsers).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from outbox_relay import runtime
from tests import support
from tests.conftest import make_topics
from tests.integration.test_db_credentials import DbUsers, forget_runtime, root_connect


def set_read_only(on: bool) -> None:
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SET GLOBAL read_only = {'ON' if on else 'OFF'}")


@pytest.fixture
def db_users(database: support.Database) -> Iterator[DbUsers]:
    users = DbUsers(database.name)
    try:
        yield users
    finally:
        set_read_only(False)  # the server is shared with every other test
        forget_runtime()
        users.drop_all()


def server_id(conn: Any) -> int:
    """The server's id of a PyMySQL connection (its PROCESSLIST id)."""
    return int(conn.thread_id())


def leases_held(database: support.Database) -> int:
    (held,) = database.query("SELECT COUNT(*) FROM outbox_shard WHERE lease_until > UTC_TIMESTAMP(6)")
    return int(held[0])


def test_a_server_turned_read_only_mid_run_is_left_and_the_next_run_relays_everything(
    database: support.Database,
    topics: support.Topics,
    invoke: Any,
    db_users: DbUsers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_topics(topics, "warmup", "order")
    relay_user = db_users.create("failover-pw")
    env = {"OUTBOX_DB_USER": relay_user, "OUTBOX_DB_PASSWORD": "failover-pw"}
    database.insert(support.backlog(6, 2, aggregate_type="warmup"))
    assert invoke(**env)["published"] == 6  # warm: the runtime and both connections exist
    warm = runtime._current
    assert warm is not None
    stores = (warm.store, warm.finalize_store)
    old_connections = [s._conn for s in stores]
    old_ids = {server_id(c) for c in old_connections if c is not None}
    assert len(old_ids) == 2 and old_ids == db_users.sessions(relay_user)

    database.insert(support.backlog(120, 6, rng=random.Random(11)))
    sends = 0
    send = warm.publisher.send

    def failover_during_second_batch(messages: Any, deadline: float) -> Any:
        nonlocal sends
        sends += 1
        if sends == 2:  # batch 1 is out (and being finalized); the writer is demoted now
            set_read_only(True)
        return send(messages, deadline)

    monkeypatch.setattr(warm.publisher, "send", failover_during_second_batch)
    # A short invocation: the shards it cannot release (read only) are leased only this long.
    failed = invoke({"batch_size": 10}, timeout=4, **env)

    assert failed["ok"] is False and failed["stopped_by"] == "database_unavailable", failed
    assert "(1290)" in failed["error"] and "--read-only" in failed["error"], failed
    assert failed["error"].startswith("database error: ") and "\n" not in failed["error"]
    # Both connections to the read-only server were closed, none kept for the next run.
    assert [s._conn for s in stores] == [None, None]
    assert support.wait_until(lambda: not db_users.sessions(relay_user), timeout=5)
    rows = database.rows()
    assert len(rows) == 126 and all(r["attempts"] == 0 for r in rows), "nothing lost, nothing charged"
    stranded = sum(1 for r in rows if r["status"] == "PENDING")
    assert stranded > 0

    set_read_only(False)  # the new writer answers
    # Leases that could not be released expire on their own (remaining time + lease margin).
    assert support.wait_until(lambda: leases_held(database) == 0, timeout=15, interval=0.2)
    monkeypatch.setattr(warm.publisher, "send", send)  # the writer is back: no more failovers
    result = invoke(**env)

    assert runtime._current is warm, "the same warm runtime"
    assert result["ok"] and result["published"] == stranded, result
    new_ids = db_users.sessions(relay_user)
    assert new_ids and not new_ids & old_ids, "reconnected"
    rows = database.rows()
    assert all(r["status"] == "PUBLISHED" and r["attempts"] == 0 for r in rows)
    delivered = support.Delivered(topics.read("order"))
    assert set(delivered.copies()) == {r["event_id"] for r in rows if r["aggregate_id"].startswith("order")}
    assert delivered.order_violations() == 0


def test_a_warm_connection_that_cannot_write_is_replaced_within_the_run(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    """After a failover that happened between invocations, the warm connections still reach the
    demoted writer while DNS already names the new one: one new connection each, and the run
    goes on.  (A read-only session stands in for the demoted writer: new sessions can write.)"""
    make_topics(topics, "order")
    database.insert(support.backlog(6, 2))
    assert invoke()["published"] == 6
    warm = runtime._current
    assert warm is not None
    stores = (warm.store, warm.finalize_store)
    old_ids = set()
    for store in stores:
        assert store._conn is not None
        old_ids.add(server_id(store._conn))
        with store._conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION READ ONLY")  # writes now fail with 1792
    database.insert(support.backlog(20, 4, rng=random.Random(11)))

    result = invoke()

    assert result["ok"] and result["published"] == 20, result
    new_ids = {server_id(s._conn) for s in stores if s._conn is not None}
    assert len(new_ids) == 2 and not new_ids & old_ids
    assert all(r["status"] == "PUBLISHED" and r["attempts"] == 0 for r in database.rows())
