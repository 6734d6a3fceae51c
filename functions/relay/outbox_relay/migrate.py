"""A tiny migration runner for the versioned SQL files under ``infra/migrations``.

Files are ``V<number>__<name>.sql``; statements end with ``;`` at the end of a line.  Each
applied file is recorded (with its checksum) in ``<table>_migrations``.  MySQL DDL is not
transactional, so every statement in a migration is written to be idempotent: a migration that
failed half-way is finished by running the command again.  Runs on one database and table take
a named lock (``GET_LOCK``), so concurrent ones apply each migration once; the tables are
checked against the relay's schema before anything is applied and again after.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from . import schema_contract
from .sql import SHARD_COUNT, OutboxSql

_FILE = re.compile(r"V(\d+)__([A-Za-z0-9_]+)\.sql")
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "infra" / "migrations"
# How long a migrate waits for another one on the same database and table (whole seconds).
LOCK_WAIT_SECONDS = 60


class MigrationError(Exception):
    """A migration could not be applied; ``str()`` says which and what to do."""


class MigrationFailed(MigrationError):
    """A statement failed (or the time ran out) part-way: what ran is kept; a re-run completes it."""


class SchemaMismatch(MigrationError):
    """A table differs from the relay's schema.  ``changed``: found after this run applied
    migrations (otherwise nothing was changed)."""

    def __init__(self, message: str, changed: bool = False) -> None:
        super().__init__(message)
        self.changed = changed


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, sql: OutboxSql) -> list[str]:
        lines = [line for line in self.text.splitlines() if not line.lstrip().startswith("--")]
        chunks = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
        return [sql.rename_tables(c.strip()) for c in chunks if c.strip()]


def discover(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} not found (pass --dir)")
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        match = _FILE.fullmatch(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def apply(
    conn: pymysql.connections.Connection[Any],
    sql: OutboxSql,
    migrations: list[Migration],
    say: Callable[[str], None],
    lock_wait_seconds: int = LOCK_WAIT_SECONDS,
    deadline: float | None = None,
) -> int:
    """Apply what is missing, in order, under a lock named after the database and table (so
    concurrent runs apply each migration once); returns how many were applied.  The tables are
    checked against the relay's schema before and after (:mod:`schema_contract`).  With a
    ``deadline`` (monotonic) no statement waits past it: each one's socket timeouts are the time
    left, and none starts without any."""
    if deadline is not None:
        lock_wait_seconds = max(0, min(lock_wait_seconds, int(deadline - time.monotonic()) - 1))
    name = _lock(conn, sql, lock_wait_seconds)
    try:
        return _apply(conn, sql, migrations, say, deadline)
    finally:
        with contextlib.suppress(pymysql.err.Error), conn.cursor() as cur:  # or with the session
            cur.execute(sql.release_lock, (name,))


def _apply(
    conn: pymysql.connections.Connection[Any],
    sql: OutboxSql,
    migrations: list[Migration],
    say: Callable[[str], None],
    deadline: float | None = None,
) -> int:
    applied = _applied(conn, sql)
    for m in migrations:
        if m.version in applied and applied[m.version][1] != m.checksum:
            raise MigrationError(
                f"V{m.version:03d}__{m.name}.sql changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    version = max(applied, default=0)
    # Before anything is written: a table of ours that is not ours would be taken as made.
    _verify(conn, sql, version, None)
    pending = [m for m in migrations if m.version not in applied]
    with conn.cursor() as cur:
        cur.execute(sql.create_migrations_table)
    for n, m in enumerate(pending, 1):
        label = f"V{m.version:03d}__{m.name}"
        statements = m.statements(sql)
        say(f"[{n}/{len(pending)}] {label}: {len(statements)} statements on `{sql.table}`...")
        started = time.monotonic()
        with conn.cursor() as cur:
            for i, statement in enumerate(statements, 1):
                try:
                    _bound(conn, deadline)
                    cur.execute(statement)
                except (pymysql.err.MySQLError, TimeoutError) as exc:
                    raise MigrationFailed(
                        f"{label} failed at statement {i}/{len(statements)}: {exc.args[-1]}. "
                        "Its statements are idempotent: fix the cause and run migrate again."
                    ) from exc
            cur.execute(sql.record_migration, (m.version, m.name, m.checksum))
        say(f"[{n}/{len(pending)}] {label}: done in {time.monotonic() - started:.2f}s")
    latest = max([version, *(m.version for m in pending)])
    if pending:
        _verify(conn, sql, latest, f"V{latest:03d}")
    _restore_shards(conn, sql, latest, say)
    if pending:
        say(f"applied {len(pending)} migration(s); `{sql.table}` is at V{latest:03d}")
    else:
        say(f"`{sql.table}` is up to date at V{latest:03d}")
    return len(pending)


def _bound(conn: pymysql.connections.Connection[Any], deadline: float | None) -> None:
    """The next statement's socket timeouts: the time left (PyMySQL reads them per statement)."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("stopped at --timeout before it")
    setattr(conn, "_read_timeout", left)  # noqa: B010
    setattr(conn, "_write_timeout", left)  # noqa: B010


def lock_name(database: str, table: str) -> str:
    """The migration lock of one outbox table.  GET_LOCK names are server-wide, at most 64
    characters: a digest keeps databases and tables apart whatever their length."""
    return f"outbox_relay_migrate.{hashlib.sha256(f'{database}.{table}'.encode()).hexdigest()[:40]}"


def _lock(conn: pymysql.connections.Connection[Any], sql: OutboxSql, wait_seconds: int) -> str:
    """Take the migration lock of this database and table, or refuse; returns its name."""
    with conn.cursor() as cur:
        cur.execute(sql.current_database)
        (database,) = cur.fetchone() or (None,)
        name = lock_name(str(database), sql.table)
        # The wait is one statement: the socket's read timeout must not cut it first.
        read_timeout = getattr(conn, "_read_timeout", None)
        if read_timeout is not None:
            setattr(conn, "_read_timeout", max(read_timeout, wait_seconds + 10.0))  # noqa: B010
        try:
            cur.execute(sql.get_lock, (name, wait_seconds))
            (taken,) = cur.fetchone() or (None,)
        finally:
            setattr(conn, "_read_timeout", read_timeout)  # noqa: B010
    if taken != 1:
        raise MigrationError(
            f"another migrate of `{database}`.`{sql.table}` held its lock for {wait_seconds} s; "
            "run it again once that one is done (nothing was changed)"
        )
    return name


def _applied(conn: pymysql.connections.Connection[Any], sql: OutboxSql) -> dict[int, tuple[str, str]]:
    """The versions the migrations table records (none when there is no table yet)."""
    live = _live(conn, sql)
    table = schema_contract.tables(sql)[2]
    found = schema_contract.find(live, table.name)
    if found is None:
        return {}
    problems = schema_contract.differences(table, found, 0)
    if problems:
        raise SchemaMismatch(f"{schema_contract.describe(table.name, problems)}; nothing was changed")
    with conn.cursor() as cur:
        cur.execute(sql.applied_migrations)
        return {int(v): (str(n), str(c)) for v, n, c in cur.fetchall()}


def _verify(
    conn: pymysql.connections.Connection[Any], sql: OutboxSql, version: int, applied: str | None
) -> None:
    """Refuse when a table differs from the relay's schema at ``version``.  ``applied``: the
    version this run just applied (None: nothing was changed)."""
    live = _live(conn, sql)
    migrations_table = sql.migrations_table
    for table in schema_contract.tables(sql):
        found = schema_contract.find(live, table.name)
        if found is None:
            if version and version >= table.since:
                raise SchemaMismatch(
                    f"table `{table.name}` does not exist, but `{migrations_table}` records V{version:03d}"
                    f" as applied: delete its rows to create the tables again; {_outcome(applied)}",
                    changed=applied is not None,
                )
            continue
        problems = schema_contract.differences(table, found, version)
        if problems:
            raise SchemaMismatch(
                f"{schema_contract.describe(table.name, problems)}; {_outcome(applied)}",
                changed=applied is not None,
            )


def _outcome(applied: str | None) -> str:
    if applied is None:
        return "nothing was changed"
    return f"found after applying up to {applied}, which is recorded"


def _live(conn: pymysql.connections.Connection[Any], sql: OutboxSql) -> dict[str, schema_contract.LiveTable]:
    names = (sql.table, sql.shard_table, sql.migrations_table)
    with conn.cursor() as cur:
        cur.execute(sql.schema_tables, names)
        tables = cur.fetchall()
        cur.execute(sql.schema_columns, names)
        columns = cur.fetchall()
        cur.execute(sql.schema_indexes, names)
        indexes = cur.fetchall()
    return schema_contract.live_tables(tables, columns, indexes)


def _restore_shards(
    conn: pymysql.connections.Connection[Any], sql: OutboxSql, version: int, say: Callable[[str], None]
) -> None:
    """A deleted shard row hides its shard from the relay: put back the missing ones."""
    if version < 1:  # no shard table yet
        return
    with conn.cursor() as cur:
        cur.execute(sql.shard_rows)
        present = {int(row[0]) for row in cur.fetchall()}
        missing = [shard for shard in range(SHARD_COUNT) if shard not in present]
        if missing:
            cur.execute(sql.restore_shards(len(missing)), missing)
            say(
                f"restored {len(missing)} missing row(s) of `{sql.shard_table}` (shards "
                f"{', '.join(map(str, missing))}): their pending events were hidden from the relay"
            )
