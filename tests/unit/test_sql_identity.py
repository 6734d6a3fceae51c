"""Every SQL comparison of an aggregate type, aggregate id or event id is byte-exact.

The outbox's text columns are utf8mb4_bin (PAD SPACE: "k" = "k " as text) and event_id is CHAR
(trailing spaces are dropped), so a bare ``aggregate_id = %s`` also matches another aggregate.
A statement may compare a column as text only to use an index, and then compares the bytes too
(``CAST(col AS BINARY) = %s``); grouping by a column as text merges keys the same way.  This test
renders every statement of sql.py and finds any comparison or grouping that is not exact, so a
statement added later is held to the rule without anyone remembering it.  The behaviour of each
exact statement on MariaDB is in tests/integration/test_sql_identity.py.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest

from outbox_relay.sql import OutboxSql, ProcessedEventsSql

IDENTITY = ("aggregate_type", "aggregate_id", "event_id")
# Statements allowed to group by a key as text, and why.
GROUPING_ALLOWED = {
    # The relay's head scan (a loose scan of the aggregate index): keys that differ only by
    # trailing spaces share a group, and the lower head stands for both until it goes; every
    # row is still read and sent by aggregate_rows, which compares bytes (sql.py says so).
    "OutboxSql.aggregate_heads",
}

_COMPARED = re.compile(
    r"(?<![\w(])(?:\w+\.)?(" + "|".join(IDENTITY) + r")\s*(=|<=>|!=|<>|\bIN\b|\bLIKE\b|<|>)", re.IGNORECASE
)
_GROUPED = re.compile(r"\b(?:GROUP BY|DISTINCT)\s+(.*?)(?:\)|\bORDER\b|\bLIMIT\b|$)", re.IGNORECASE)


def _call(method: Any) -> str:
    params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    args: list[Any] = []
    for p in params:
        text = str(p.annotation)
        args.append([2, 2] if "Sequence" in text else "SELECT 1" if text == "str" else 2)
    return str(method(*args))


def statements() -> Iterator[tuple[str, str]]:
    for cls, obj in ((OutboxSql, OutboxSql("outbox")), (ProcessedEventsSql, ProcessedEventsSql())):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_"):
                continue
            if isinstance(member, property):
                text = getattr(obj, name)
            elif inspect.isfunction(member):
                text = _call(getattr(obj, name))
            else:
                continue
            if isinstance(text, str) and text.strip():
                yield f"{cls.__name__}.{name}", text


def inexact(name: str, sql: str) -> list[str]:
    """What in ``sql`` compares or groups an identity column as text without its bytes."""
    if name.startswith("ProcessedEventsSql."):
        return []  # VARBINARY columns: compared as bytes (test_processed_events_keys_are_binary)
    found = []
    for match in _COMPARED.finditer(sql):
        column = match.group(1).lower()
        alias = match.group(0).split(column)[0]  # "o." or ""
        if f"CAST({alias}{column} AS BINARY) =" not in sql:
            found.append(f"{match.group(0).strip()} without CAST({alias}{column} AS BINARY) =")
    if name not in GROUPING_ALLOWED:
        for match in _GROUPED.finditer(sql):
            for column in re.split(r"\s*,\s*", match.group(1)):
                bare = column.strip().split(".")[-1].lower()
                if bare in IDENTITY:
                    found.append(f"groups by {column.strip()} as text")
    return found


def test_every_comparison_of_an_aggregate_or_event_id_in_sql_py_is_byte_exact() -> None:
    rendered = dict(statements())
    assert len(rendered) > 50, "the statements were not all found"
    problems = {name: why for name, sql in rendered.items() if (why := inexact(name, sql))}
    assert problems == {}


@pytest.mark.parametrize(
    ("sql", "flagged"),
    [
        ("SELECT 1 FROM t WHERE status = 'DEAD' AND event_id = %s", True),
        ("UPDATE t SET x = 1 WHERE o.aggregate_id IN (%s, %s)", True),
        ("SELECT 1 FROM t WHERE aggregate_id = %s AND CAST(aggregate_id AS BINARY) = %s", False),
        ("SELECT 1 FROM t WHERE CAST(aggregate_type AS BINARY) = %s", False),
        ("SELECT aggregate_type, COUNT(*) FROM t GROUP BY aggregate_type, status", True),
        ("SELECT COUNT(DISTINCT aggregate_type, aggregate_id) FROM t", True),
        ("SELECT COUNT(DISTINCT CAST(aggregate_type AS BINARY)) FROM t", False),
        ("SELECT 1 FROM t WHERE id = %s", False),
    ],
)
def test_the_check_finds_a_text_comparison(sql: str, flagged: bool) -> None:
    assert bool(inexact("OutboxSql.example", sql)) is flagged


def test_processed_events_keys_are_binary() -> None:
    create = ProcessedEventsSql().create
    assert re.search(r"\bscope VARBINARY\(\d+\)", create) and re.search(
        r"\bevent_id VARBINARY\(\d+\)", create
    )
