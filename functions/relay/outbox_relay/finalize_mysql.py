"""The writes of the fenced finalize (inside the store's transaction, after the shard locks):
a bounded number of statements whatever the plan holds, so the transaction's time is bounded by
rows / FINALIZE_ROWS round trips, not one per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pymysql.cursors

from .model import FinalizePlan, RetryDecision
from .rowtext import shown
from .sql import OutboxSql

T = TypeVar("T")
# Rows per statement: a few statements for a whole batch, each well within any server's
# max_allowed_packet (an error is up to 1024 characters).
FINALIZE_ROWS = 200
ERROR_CHARS = 1024


def apply_plan(
    cur: pymysql.cursors.Cursor,
    sql: OutboxSql,
    plan: FinalizePlan,
    kept: Sequence[int],
    delete_on_publish: bool,
) -> tuple[int, int, int]:
    """Apply ``plan`` to the rows of the ``kept`` shards; (published, retried, dead) rows changed."""
    published = retried = dead = 0
    if plan.published:
        mark = sql.delete_published if delete_on_publish else sql.mark_published
        published = cur.execute(mark(len(plan.published), len(kept)), [*plan.published, *kept])
    for rows in _chunks(_first_per_row(plan.retries, lambda d: d.record_id)):
        values = [v for d in rows for v in _retry_values(d)]
        retried += cur.execute(
            sql.schedule_retries(len(rows), len(kept)), [*values, *(d.record_id for d in rows), *kept]
        )
    for dead_rows in _chunks(_first_per_row(plan.dead, lambda d: d[0])):
        values = [v for rid, why in dead_rows for v in (rid, shown(why)[:ERROR_CHARS])]
        dead += cur.execute(
            sql.mark_dead(len(dead_rows), len(kept)), [*values, *(rid for rid, _ in dead_rows), *kept]
        )
    return published, retried, dead


def _retry_values(d: RetryDecision) -> tuple[Any, ...]:
    return (
        d.record_id,
        d.attempts,
        1 if d.charge_attempt else 0,
        _micros(d.delay_seconds),
        shown(d.error)[:ERROR_CHARS],
    )


def _micros(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def _first_per_row(items: Sequence[T], key: Callable[[T], int]) -> list[T]:
    """One decision per row, the first: as one UPDATE per decision applied them (the status and
    attempts guards made a later one for the same row change nothing)."""
    first: dict[int, T] = {}
    for item in items:
        first.setdefault(key(item), item)
    return list(first.values())


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + FINALIZE_ROWS] for i in range(0, len(items), FINALIZE_ROWS)]
