"""`outbox-relay migrate` checks what it claims, on the real MariaDB: a table of our names that is
not ours is refused (nothing recorded over it), a damaged one is never "up to date", and
concurrent runs apply the schema once."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outbox_relay import cli
from outbox_relay.cli_common import DONE, REFUSED
from outbox_relay.migrate import lock_name
from tests import support
from tests.conftest import make_topics

V001 = (support.MIGRATIONS / "V001__create_outbox.sql").read_text()
NOTHING = "nothing was changed"
DEBEZIUM = (
    "CREATE TABLE outbox (id VARCHAR(36) NOT NULL PRIMARY KEY, aggregatetype VARCHAR(255) NOT NULL,"
    " aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, payload JSON)"
)


@pytest.fixture
def empty(local_stack: None) -> Iterator[support.Database]:
    """A fresh database with nothing in it (the `database` fixture migrates)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    yield support.Database(name)
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def migrate(
    db: support.Database, monkeypatch: pytest.MonkeyPatch, *extra: str, directory: Path = support.MIGRATIONS
) -> int:
    for key, value in {
        "OUTBOX_DB_HOST": support.DB_HOST,
        "OUTBOX_DB_PORT": str(support.DB_PORT),
        "OUTBOX_DB_NAME": db.name,
        "OUTBOX_DB_USER": support.DB_USER,
        "OUTBOX_DB_PASSWORD": support.DB_PASSWORD,
    }.items():
        monkeypatch.setenv(key, value)
    return cli.main(["migrate", "--dir", str(directory), *extra])


def tables(db: support.Database) -> list[str]:
    return sorted(str(name) for (name,) in db.query("SHOW TABLES"))


def refused(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """The one line on stderr, which names the difference and says nothing was changed."""
    out, err = capsys.readouterr()
    assert "up to date" not in out and "applied" not in out, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_debezium_style_outbox_is_refused_and_nothing_is_recorded_over_it(
    empty: support.Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty.query(DEBEZIUM)

    assert migrate(empty, monkeypatch) == REFUSED

    line = refused(capsys, "table `outbox` exists but does not match the relay's schema:", NOTHING)
    assert "`shard`" in line and "missing" in line and "column `id` is varchar(36), expected bigint" in line
    # No V001 recorded over it, no shard table made beside it.
    assert tables(empty) == ["outbox"]


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("ALTER TABLE outbox DROP COLUMN shard", "column `shard` missing"),
        ("ALTER TABLE outbox MODIFY payload TEXT NOT NULL", "column `payload` is text, expected"),
        ("ALTER TABLE outbox MODIFY topic VARCHAR(249) NOT NULL", "`topic` is NOT NULL, expected NULL"),
        ("ALTER TABLE outbox MODIFY status VARCHAR(16) NOT NULL", "`status` is varchar(16), expected enum"),
        ("ALTER TABLE outbox DROP INDEX ix_outbox_aggregate_head", "index `ix_outbox_aggregate_head`"),
        ("ALTER TABLE outbox DROP INDEX uq_outbox_event_id", "index `uq_outbox_event_id` (event_id) missing"),
        ("ALTER TABLE outbox_shard MODIFY fence BIGINT UNSIGNED NULL", "`outbox_shard` exists but"),
        ("ALTER TABLE outbox_shard ENGINE = MyISAM", "engine MyISAM, expected InnoDB"),
        ("DROP TABLE outbox", "table `outbox` does not exist, but `outbox_migrations` records V002"),
    ],
)
def test_a_damaged_schema_is_never_up_to_date(
    empty: support.Database,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    named: str,
) -> None:
    assert migrate(empty, monkeypatch) == DONE
    capsys.readouterr()
    empty.query(damage)

    assert migrate(empty, monkeypatch) == REFUSED
    refused(capsys, named, NOTHING)


def test_a_table_made_by_hand_from_v001_is_taken_and_v002_applied(
    empty: support.Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README allows applying V001 by hand: such tables are ours, and V002 is added."""
    with empty.conn() as conn, conn.cursor() as cur:
        for statement in V001.split(";\n"):
            if statement.strip() and not all(
                line.startswith("--") for line in statement.strip().splitlines()
            ):
                cur.execute(statement)

    assert migrate(empty, monkeypatch) == DONE

    assert "applied 2 migration(s); `outbox` is at V002" in capsys.readouterr().out
    assert [v for (v,) in empty.query("SELECT version FROM outbox_migrations ORDER BY version")] == [1, 2]


def test_an_index_of_our_name_with_other_columns_is_refused_before_v002_is_recorded(
    empty: support.Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """V002 adds its index only when no index of its name exists: one with other columns would
    have been recorded as V002 and the relay would scan its shards' rows."""
    only_v001 = tmp_path / "migrations"
    only_v001.mkdir()
    (only_v001 / "V001__create_outbox.sql").write_text(V001)
    assert migrate(empty, monkeypatch, directory=only_v001) == DONE
    empty.query("ALTER TABLE outbox ADD INDEX ix_outbox_aggregate_head (shard, id)")
    capsys.readouterr()

    assert migrate(empty, monkeypatch) == REFUSED

    refused(capsys, "index `ix_outbox_aggregate_head` is (shard, id), expected (shard, status,")
    assert empty.query("SELECT version FROM outbox_migrations") == [(1,)]


def test_a_foreign_migrations_table_is_refused(
    empty: support.Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty.query("CREATE TABLE outbox_migrations (id INT PRIMARY KEY, script VARCHAR(255))")

    assert migrate(empty, monkeypatch) == REFUSED

    refused(capsys, "table `outbox_migrations` exists but does not match", "columns `version`, `name`")
    assert tables(empty) == ["outbox_migrations"]


def test_concurrent_migrates_apply_the_schema_once(
    empty: support.Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    codes: list[int] = []
    start = threading.Barrier(8)

    def run() -> None:
        start.wait()
        codes.append(migrate(empty, monkeypatch))

    runners = [threading.Thread(target=run) for _ in range(8)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()

    out, err = capsys.readouterr()
    assert codes == [DONE] * 8, err
    assert err == ""
    assert out.count("applied 2 migration(s)") == 1, out
    assert out.count("is up to date at V002") == 7, out
    assert empty.query("SELECT version FROM outbox_migrations ORDER BY version") == [(1,), (2,)]
    assert empty.query("SELECT COUNT(*) FROM outbox_shard") == [(16,)]


def test_a_migrate_that_cannot_take_the_lock_in_time_refuses_in_one_line(
    empty: support.Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with support.connect(empty.name) as holder, holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0)", (lock_name(empty.name, "outbox"),))
        assert cur.fetchone() == (1,)
        started = time.monotonic()

        assert migrate(empty, monkeypatch, "--lock-wait", "1") == REFUSED

        assert time.monotonic() - started < 5
        refused(capsys, f"another migrate of `{empty.name}`.`outbox` held its lock for 1 s", NOTHING)
        assert tables(empty) == []


def test_migrate_restores_deleted_shard_rows(
    empty: support.Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrate(empty, monkeypatch) == DONE
    empty.query("DELETE FROM outbox_shard WHERE shard IN (3, 7)")
    capsys.readouterr()

    assert migrate(empty, monkeypatch) == DONE

    out = capsys.readouterr().out
    assert "restored 2 missing row(s) of `outbox_shard` (shards 3, 7)" in out
    assert "`outbox` is up to date at V002" in out
    assert empty.query("SELECT COUNT(*) FROM outbox_shard") == [(16,)]


def test_a_deleted_shard_row_no_longer_hides_its_pending_rows_from_status_or_the_relay(
    database: support.Database,
    topics: support.Topics,
    relay_env: dict[str, str],
    invoke: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_topics(topics, "order")
    database.insert(support.backlog(200, 60))
    hidden = database.query("SELECT COUNT(*) FROM outbox WHERE shard IN (3, 7)")[0][0]
    assert hidden > 0
    database.query("DELETE FROM outbox_shard WHERE shard IN (3, 7)")
    for key, value in relay_env.items():
        monkeypatch.setenv(key, value)

    # status counts every pending row and says which shards lack their row; it changes nothing.
    assert cli.main(["status", "--json"]) == DONE
    status = json.loads(capsys.readouterr().out)
    assert (status["pending"], status["missing_shard_rows"]) == (200, [3, 7])
    assert status["topics"][0]["pending"] == 200
    assert cli.main(["status"]) == DONE
    assert "warning: `outbox_shard` has no row for shard(s) 3, 7:" in capsys.readouterr().out
    assert database.query("SELECT COUNT(*) FROM outbox_shard") == [(14,)]

    # The relay puts the rows back when it reads the shard list, and publishes everything.
    summary = invoke()
    assert (summary["published"], summary["pending"], summary["stopped_by"]) == (200, 0, "drained"), summary
    assert len(topics.read("order")) == 200
    assert database.query("SELECT COUNT(*) FROM outbox_shard") == [(16,)]
