"""A tiny migration runner for the versioned SQL files under ``infra/migrations``.

Files are ``V<number>__<name>.sql``; statements end with ``;`` at the end of a line.  Each
applied file is recorded (with its checksum) in ``<table>_migrations``.  MySQL DDL is not
transactional, so every statement in a migration is written to be idempotent: a migration that
failed half-way is finished by running the command again.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from .sql import OutboxSql

_FILE = re.compile(r"V(\d+)__([A-Za-z0-9_]+)\.sql")
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "infra" / "migrations"


class MigrationError(Exception):
    """A migration could not be applied; ``str()`` says which and what to do."""


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
) -> int:
    """Apply what is missing, in order; returns how many were applied."""
    with conn.cursor() as cur:
        cur.execute(sql.create_migrations_table)
        cur.execute(sql.applied_migrations)
        applied = {int(v): (str(n), str(c)) for v, n, c in cur.fetchall()}
    for m in migrations:
        if m.version in applied and applied[m.version][1] != m.checksum:
            raise MigrationError(
                f"V{m.version:03d}__{m.name}.sql changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    pending = [m for m in migrations if m.version not in applied]
    for n, m in enumerate(pending, 1):
        label = f"V{m.version:03d}__{m.name}"
        statements = m.statements(sql)
        say(f"[{n}/{len(pending)}] {label}: {len(statements)} statements on `{sql.table}`...")
        started = time.monotonic()
        with conn.cursor() as cur:
            for i, statement in enumerate(statements, 1):
                try:
                    cur.execute(statement)
                except pymysql.err.MySQLError as exc:
                    raise MigrationError(
                        f"{label} failed at statement {i}/{len(statements)}: {exc.args[-1]}. "
                        "Its statements are idempotent: fix the cause and run migrate again."
                    ) from exc
            cur.execute(sql.record_migration, (m.version, m.name, m.checksum))
        say(f"[{n}/{len(pending)}] {label}: done in {time.monotonic() - started:.2f}s")
    latest = max((m.version for m in migrations), default=0)
    if pending:
        say(f"applied {len(pending)} migration(s); `{sql.table}` is at V{latest:03d}")
    else:
        say(f"`{sql.table}` is up to date at V{latest:03d}")
    return len(pending)
