"""Blocked backlogs of every shape never starve the rest (README, "Reading a shard").

Generated shapes: N blocked aggregates x backlog depth x one shard / all shards x why they are
blocked (a head backing off; a topic that does not exist, whose heads the relay itself backed
off in an earlier run).  Behind them, in id order, sendable rows of another aggregate type:
the first run must publish them in its first pass, not spin on the blocked work, and never
report ``drained`` while a row it could send is still pending.  The rows are written in bulk,
by INSERT ... SELECT over a digits table made by a recursive CTE (MySQL 8 and MariaDB alike)."""

from __future__ import annotations

import time
import zlib
from typing import Any

import pytest

from outbox_relay.relay import Relay
from tests import support
from tests.conftest import make_topics

DIGITS = "WITH RECURSIVE d (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM d WHERE n < 9)"
# 0 .. 10^6 - 1, from six digits.
NUMBERS = (
    "SELECT a.n + 10 * b.n + 100 * c.n + 1000 * e.n + 10000 * f.n + 100000 * g.n AS k"
    " FROM d a, d b, d c, d e, d f, d g"
)
SHARD = 5


class Reads:
    """What each read of the relay (``Relay._read``) selected to send: aggregate ids per read."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def first_with(self, aggregate_ids: set[str]) -> int | None:
        """The first read (1-based) that selected a row of one of these aggregates."""
        return next((n for n, ids in enumerate(self.sent, 1) if aggregate_ids & set(ids)), None)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()
    real = Relay._read

    def counted(self: Relay, *args: Any) -> Any:
        out = real(self, *args)
        seen.sent.append([record.aggregate_id for record, _ in out[1].sendable])
        return out

    monkeypatch.setattr(Relay, "_read", counted)
    return seen


def write_blocked(
    database: support.Database, aggregates: int, depth: int, one_shard: bool, kind: str
) -> None:
    """``aggregates`` aggregates of type ``kind`` (``blk-<k>``), ``depth`` rows each, written
    round by round (every aggregate's row 1, then every row 2, ...), so their rows fill the id
    range the sendable rows come after.  ``one_shard``: all of them in shard ``SHARD``."""
    where = f"WHERE CRC32(CONCAT('blk-', k)) %% 16 = {SHARD}" if one_shard else ""
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE blk_names (k INT NOT NULL PRIMARY KEY)")
        cur.execute(
            f"INSERT INTO blk_names (k) {DIGITS} SELECT k FROM ({NUMBERS}) x {where} ORDER BY k LIMIT %s",
            (aggregates,),
        )
        cur.execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, seq)"
            f" {DIGITS} SELECT %s, CONCAT('blk-', b.k), 'Changed', '{{}}', r.n + 1"
            " FROM (SELECT x.n + 10 * y.n + 100 * z.n AS n FROM d x, d y, d z) r"
            " JOIN blk_names b WHERE r.n < %s ORDER BY r.n, b.k",
            (kind, depth),
        )
        cur.execute("DROP TABLE blk_names")


def back_off_heads(database: support.Database, kind: str) -> None:
    """Every head of ``kind`` backing off for an hour, as a failed send leaves it."""
    database.query(
        "UPDATE outbox SET attempts = 3, last_error = 'broker said no',"
        " available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE aggregate_type = %s AND seq = 1",
        kind,
    )


def victims(one_shard: bool) -> list[str]:
    """Sendable aggregates: one in the blocked shard, or one in every shard."""
    wanted = {SHARD} if one_shard else set(range(16))
    out: dict[int, str] = {}
    n = 0
    while len(out) < len(wanted):
        name = f"victim-{n}"
        shard = zlib.crc32(name.encode()) % 16
        if shard in wanted and shard not in out:
            out[shard] = name
        n += 1
    return sorted(out.values())


def write_victims(database: support.Database, names: list[str], rows: int = 2) -> int:
    database.insert(
        [support.Event("order", v, "Changed", b"{}", seq=n) for v in names for n in range(1, rows + 1)]
    )
    return len(names) * rows


def block(
    database: support.Database, invoke: Any, shape: tuple[int, int, bool, str]
) -> tuple[str, list[str]]:
    """Write the blocked backlog of ``shape`` and block it; returns its type and the victims."""
    aggregates, depth, one_shard, reason = shape
    kind = "ghost" if reason == "topic" else "stuck"
    write_blocked(database, aggregates, depth, one_shard, kind)
    if reason == "topic":
        # The relay meets the missing topic itself and backs each head off, uncharged.
        warm = invoke(OUTBOX_BATCH_SIZE="500", KAFKA_MAX_BLOCK_MS="1000")
        assert warm["ok"] and warm["published"] == 0, warm
        ((held,),) = database.query(
            "SELECT COUNT(*) FROM outbox WHERE seq = 1 AND available_at > UTC_TIMESTAMP(6) AND attempts = 0"
        )
        assert held == aggregates, (held, warm)
        ((most,),) = database.query(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM outbox WHERE seq = 1 GROUP BY shard) x"
        )
        # Learning the topic is missing costs about a pass per page of heads never tried, no more.
        assert warm["passes"] <= most // 16 + 3, (warm, most)
    else:
        back_off_heads(database, kind)
    return kind, victims(one_shard)


SHAPES = [
    (aggregates, depth, one_shard, reason)
    for aggregates, depth in ((150, 1), (300, 300), (3000, 5))
    for one_shard in (True, False)
    for reason in ("backoff", "topic")
]


@pytest.mark.parametrize(
    "shape", SHAPES, ids=[f"{a}x{d}-{'one' if o else 'all'}-{r}" for a, d, o, r in SHAPES]
)
def test_a_sendable_row_behind_any_blocked_backlog_goes_out_in_the_first_pass(
    database: support.Database,
    topics: support.Topics,
    invoke: Any,
    reads: Reads,
    shape: tuple[int, int, bool, str],
) -> None:
    make_topics(topics, "order")
    _, names = block(database, invoke, shape)
    sendable = write_victims(database, names)
    reads.sent.clear()

    summary = invoke(OUTBOX_BATCH_SIZE="500")

    assert summary["ok"] and summary["published"] == sendable, summary
    assert reads.first_with(set(names)) == 1, reads.sent[:5]  # every victim shard, in the first read
    assert set(names) <= set(reads.sent[0]), reads.sent[0]
    # No read spent on blocked work: one pass sends it all, the next finds nothing (and a third
    # may follow the finalize of the first).
    assert summary["passes"] == 1 and len(reads.sent) <= 3, (summary, len(reads.sent))
    assert summary["stopped_by"] == "drained", summary
    assert database.status_counts()["PUBLISHED"] == sendable
    per_key: dict[str, list[int]] = {}
    for record in topics.read("order"):
        per_key.setdefault((record.key or b"").decode(), []).append(int(record.headers["seq"]))
    assert per_key == {v: [1, 2] for v in names}


def test_a_run_with_only_blocked_work_left_ends_at_once_and_never_calls_a_sendable_row_drained(
    database: support.Database, topics: support.Topics, invoke: Any, reads: Reads
) -> None:
    """Blocked work alone: the run ends drained after reading it, without a pass.  A victim
    with a long backlog of its own behind the blocked ones is drained whole, in full passes."""
    make_topics(topics, "order")
    write_blocked(database, 2000, 3, True, "stuck")
    back_off_heads(database, "stuck")

    started = time.monotonic()
    idle = invoke(OUTBOX_BATCH_SIZE="500")
    assert idle["ok"] and idle["passes"] == 0 and idle["stopped_by"] == "drained", idle
    assert time.monotonic() - started < 5 and len(reads.sent) <= 2, len(reads.sent)  # no spinning

    (victim,) = victims(True)
    backlog = write_victims(database, [victim], rows=3000)
    summary = invoke(OUTBOX_BATCH_SIZE="500")
    assert summary["ok"] and summary["published"] == backlog and summary["stopped_by"] == "drained", summary
    assert summary["passes"] <= backlog // 500 + 2, summary  # whole pages of the victim, not a row per pass


@pytest.mark.slow
def test_twenty_thousand_blocked_aggregates_with_200k_rows_behind_them_let_a_late_row_through(
    database: support.Database, topics: support.Topics, invoke: Any, reads: Reads, relay_env: dict[str, str]
) -> None:
    """The large case: 20,000 blocked aggregates of one shard, 11 rows each (200,000 behind their
    heads), then one sendable aggregate.  Published in the first pass; the read is timed."""
    from outbox_relay.config import load_config
    from outbox_relay.db import connector
    from outbox_relay.sql import OutboxSql
    from outbox_relay.store_mysql import MySQLOutboxStore

    make_topics(topics, "order")
    write_blocked(database, 20_000, 11, True, "stuck")
    back_off_heads(database, "stuck")
    (victim,) = victims(True)
    sendable = write_victims(database, [victim])

    summary = invoke(OUTBOX_BATCH_SIZE="500")

    assert summary["ok"] and summary["published"] == sendable and summary["passes"] == 1, summary
    assert reads.first_with({victim}) == 1 and len(reads.sent) <= 3, len(reads.sent)

    store = MySQLOutboxStore(connector(load_config(relay_env).database), OutboxSql())
    write_victims(database, [victim])  # two more rows to find
    timings = []
    for _ in range(3):
        started = time.monotonic()
        rows = store.read_due_heads([SHARD], 500, {})
        timings.append(time.monotonic() - started)
    store.close()
    assert sorted(r.aggregate_id for r in rows if r.due) == [victim, victim]
    print(f"\nread of the due heads over 220,000 pending rows of one shard: {min(timings) * 1000:.0f} ms")
    assert min(timings) < 2.0, timings


def test_the_head_index_migration_is_online_idempotent_and_follows_the_table_name(
    local_stack: None,
) -> None:
    import uuid

    from outbox_relay.migrate import apply, discover
    from outbox_relay.sql import OutboxSql

    name = f"t_{uuid.uuid4().hex[:12]}"
    sql = OutboxSql("billing_outbox")
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        with support.connect(name) as conn:
            migrations = discover(support.MIGRATIONS)
            assert apply(conn, sql, migrations, lambda _: None) == len(migrations)
            (v002,) = [m for m in migrations if m.version == 2]
            with conn.cursor() as cur:
                for statement in v002.statements(sql):  # a re-run after a cut-off migration
                    cur.execute(statement)
                cur.execute(
                    "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_NAME = 'billing_outbox' AND INDEX_NAME = 'ix_outbox_aggregate_head'"
                    " ORDER BY SEQ_IN_INDEX",
                    (name,),
                )
                columns = [r[0] for r in cur.fetchall()]
        assert columns == ["shard", "status", "aggregate_type", "aggregate_id", "id"]
        assert "ALGORITHM=INPLACE, LOCK=NONE" in v002.text
    finally:
        with support.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
