"""All SQL (the statements module and the migrations) stays in the MySQL 8 / MariaDB 10.11 subset."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from outbox_relay import sql as sql_module
from outbox_relay.sql import OutboxSql, valid_identifier

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    r"\bFOR SHARE\b": "MariaDB has no FOR SHARE",
    r"\bRETURNING\b": "MySQL has no RETURNING",
    r"\bSKIP LOCKED\b|\bNOWAIT\b|\bWAIT \d": "not needed with shard leases; spelled differently",
    r"->>?": "JSON path operators differ (MariaDB has no ->>)",
    r"\bJSON\b(?!\s+(object|text|list))": "the JSON type differs between the servers",
    r"utf8mb4_0900": "MariaDB 10.11 has no utf8mb4_0900 collations",
    r"\bNOW\(": "use UTC_TIMESTAMP(6): NOW depends on the session time zone",
    r"\bCURRENT_TIMESTAMP\b": "use UTC_TIMESTAMP(6)",
    r"\bWITH\s+\w+\s+AS\s*\(": "CTE + UPDATE is MySQL-only",
}


def all_sql() -> list[tuple[str, str]]:
    statements = []
    s = OutboxSql()
    for name in dir(s):
        if name.startswith("_"):
            continue
        value = getattr(s, name)
        if isinstance(value, str) and " " in value:
            statements.append((name, value))
        elif callable(value) and name not in ("rename_tables",):
            if name == "read_heads":
                statements.append((name, value([2, 0])))
                continue
            arity = len(inspect.signature(value).parameters)
            statements.append((name, value(*[2] * arity)))
    statements += [(f"SESSION_SETUP[{i}]", text) for i, text in enumerate(sql_module.SESSION_SETUP)]
    for path in sorted((ROOT / "infra" / "migrations").glob("*.sql")):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
        statements.append((path.name, text))
    return statements


@pytest.mark.parametrize(("name", "text"), all_sql(), ids=[n for n, _ in all_sql()])
def test_statement_is_portable(name: str, text: str) -> None:
    for pattern, why in FORBIDDEN.items():
        assert not re.search(pattern, text, re.IGNORECASE), f"{name}: {why}"
    if re.match(r"\s*(UPDATE|DELETE)", text, re.IGNORECASE):
        table = re.search(r"(?:UPDATE|FROM)\s+(`\w+`)", text, re.IGNORECASE)
        assert table and not re.search(rf"\(\s*SELECT[^)]*FROM\s+{table.group(1)}", text, re.IGNORECASE), (
            f"{name}: same-table subquery in UPDATE/DELETE (MySQL error 1093)"
        )


def test_every_time_comes_from_the_database_clock() -> None:
    """Python passes durations only: every INTERVAL is added to the database's UTC_TIMESTAMP(6)."""
    for name, text in all_sql():
        intervals = re.findall(r"(\S+ [+-] )?INTERVAL %s (\w+)", text)
        assert len(intervals) == text.count("INTERVAL"), name
        for base, unit in intervals:
            assert base.startswith("UTC_TIMESTAMP(6)") and unit in ("MICROSECOND", "SECOND"), name


@pytest.mark.parametrize("name", ["outbox", "orders_outbox", "_x", "a" * 48])
def test_valid_table_names(name: str) -> None:
    assert valid_identifier(name)
    assert f"`{name}_shard`" in OutboxSql(name).acquire_shard


@pytest.mark.parametrize("name", ["", "1outbox", "out-box", "outbox`; DROP TABLE t; --", "a" * 49, "out box"])
def test_table_names_that_could_inject_sql_are_refused(name: str) -> None:
    assert not valid_identifier(name)
    with pytest.raises(ValueError, match="invalid table name"):
        OutboxSql(name)


def test_migrations_follow_the_configured_table_name() -> None:
    ddl = "CREATE TABLE IF NOT EXISTS `outbox` (...); INSERT IGNORE INTO `outbox_shard` (shard) VALUES (0)"
    renamed = OutboxSql("billing_outbox").rename_tables(ddl)
    assert "`billing_outbox`" in renamed and "`billing_outbox_shard`" in renamed and "`outbox`" not in renamed
