"""Guarantee: the fenced finalize is a bounded number of statements whatever its plan holds (one
round trip per FINALIZE_ROWS rows, not one per row), and applies exactly what one guarded UPDATE
per row did: each row its own charge, delay and error; never a row whose attempts moved since
the read, one no longer PENDING, or one of a shard whose lease was lost; a re-run charges
nothing again.  On the real MariaDB."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.finalize_mysql import FINALIZE_ROWS
from outbox_relay.model import FinalizePlan, RetryDecision
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore
from tests import support

COLUMNS = (
    "id, status, attempts, last_error, shard, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), available_at)"
)


def _state(database: support.Database) -> dict[int, tuple[Any, ...]]:
    return {int(r[0]): r[1:] for r in database.query(f"SELECT {COLUMNS} FROM outbox ORDER BY id")}


def _updates(store: MySQLOutboxStore) -> int:
    def work(conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_update', 'Com_update_multi')")
            return sum(int(v) for _, v in cur.fetchall())

    return store.run(work, "count statements")


def _store(relay_env: dict[str, str]) -> MySQLOutboxStore:
    return MySQLOutboxStore(connector(load_config(relay_env).database), OutboxSql())


def test_a_finalize_of_thousands_of_rows_is_a_few_statements(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    database.insert(support.backlog(3000, 300, size=50))
    ids = [int(r[0]) for r in database.query("SELECT id FROM outbox ORDER BY id")]
    store, token = _store(relay_env), uuid.uuid4().bytes
    shards = store.acquire_shards(token, "test", 60.0, 0, ())
    plan = FinalizePlan(
        published=ids[:1000],
        retries=[RetryDecision(i, 30.0, f"boom {i}", i % 2 == 0, 0) for i in ids[1000:2000]],
        dead=[(i, f"poison {i}") for i in ids[2000:]],
    )
    before = _updates(store)
    result = store.finalize(token, shards, plan, 60.0)
    statements = _updates(store) - before

    assert (result.published, result.retried, result.dead) == (1000, 1000, 1000)
    # One for the published rows, 1000 / 200 for the retries and for the dead, one lease renewal.
    assert FINALIZE_ROWS == 200
    assert statements == 12, f"{statements} UPDATE statements for 3000 rows"
    assert database.status_counts() == {"PUBLISHED": 1000, "PENDING": 1000, "DEAD": 1000}
    state = _state(database)
    for i in ids[1000:2000]:
        _, attempts, error, _, wait_us = state[i]
        assert attempts == (1 if i % 2 == 0 else 0) and error == f"boom {i}" and 25e6 < wait_us <= 30e6
    store.close()


_errors = st.text(st.characters(codec="utf-8"), max_size=1100)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_batched_finalize_applies_what_one_guarded_update_per_row_did(
    database: support.Database, relay_env: dict[str, str], data: st.DataObject
) -> None:
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM outbox")
        cur.execute("UPDATE outbox_shard SET lease_token = NULL, lease_until = '1970-01-01'")
    database.insert(support.backlog(40, 12, size=30))
    # Rows moved on since the relay read them: another status, or attempts charged meanwhile.
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute("UPDATE outbox SET attempts = 2 WHERE id % 7 = 0")
        cur.execute("UPDATE outbox SET status = 'PUBLISHED' WHERE id % 11 = 0")
    before = _state(database)
    ids = sorted(before)
    store, token = _store(relay_env), uuid.uuid4().bytes
    shards = store.acquire_shards(token, "test", 60.0, 0, ())
    lost = data.draw(st.sets(st.sampled_from(shards), max_size=4))
    with database.conn() as conn, conn.cursor() as cur:  # taken over since: the fence leaves them
        for shard in lost:
            cur.execute("UPDATE outbox_shard SET lease_token = %s WHERE shard = %s", (b"x" * 16, shard))

    order = data.draw(st.permutations(ids))
    split = sorted(data.draw(st.lists(st.integers(0, len(ids)), min_size=2, max_size=2)))
    published, retried, dead = order[: split[0]], order[split[0] : split[1]], order[split[1] :]
    retries = [
        RetryDecision(i, data.draw(st.floats(0, 3600)), data.draw(_errors), data.draw(st.booleans()), 0)
        for i in retried
    ]
    retries += [dataclasses.replace(r, error="second decision: ignored") for r in retries[:3]]
    plan = FinalizePlan(published, retries, [(i, data.draw(_errors)) for i in dead])

    result = store.finalize(token, shards, plan, 60.0)
    after = _state(database)

    first = {r.record_id: r for r in reversed(retries)}
    counts = {"published": 0, "retried": 0, "dead": 0}
    for i in ids:
        status, attempts, _error, shard, _ = before[i]
        applies = shard not in lost and status == "PENDING"
        if i in first and applies and attempts == 0:
            d = first[i]
            counts["retried"] += 1
            new = after[i]
            assert new[:3] == ("PENDING", attempts + int(d.charge_attempt), d.error[:1024]), i
            assert abs(new[4] - d.delay_seconds * 1e6) < 5e6, i
        elif i in dead and applies:
            counts["dead"] += 1
            reason = dict(plan.dead)[i]
            assert after[i][:3] == ("DEAD", attempts, reason[:1024]), i
        elif i in published and applies:
            counts["published"] += 1
            assert after[i][0] == "PUBLISHED", i
        else:
            assert after[i][:4] == before[i][:4], f"row {i} was not to be touched"
    assert (result.published, result.retried, result.dead) == tuple(counts.values())
    assert result.lost_shards == frozenset(lost)

    # A re-run (a COMMIT whose answer was lost) charges no attempt again.
    store.finalize(token, shards, plan, 60.0)
    assert {i: r[1] for i, r in _state(database).items()} == {i: r[1] for i, r in after.items()}
    store.close()
