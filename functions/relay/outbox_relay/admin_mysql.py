"""Operator work on the outbox: retention (the janitor), status, redrive and purge of DEAD rows.

Every change is either one statement or one transaction: a failed command changes nothing, or
(the janitor) stops between two committed batches.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql

from .config import RetentionSettings
from .messages import topic_for
from .model import BLOCKED_LISTED, OutboxRecord
from .ports import StoreUnavailable
from .rowtext import decode, decode_nullable, raw, shown
from .store_mysql import MySQLOutboxStore, micros

log = logging.getLogger("outbox_relay")

Progress = Callable[[str], None]
# A short pause between janitor batches lets writers and the relay in.
BATCH_PAUSE_SECONDS = 0.01
REPORT_EVERY_BATCHES = 10


class AdminError(Exception):
    """An operator command that was refused; nothing was changed.  ``str()`` is one line."""


@dataclass
class JanitorReport:
    deleted_published: int = 0
    deleted_dead: int = 0
    batches: int = 0
    stopped_by: str = "done"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "action": "janitor", **self.__dict__}


@dataclass(frozen=True)
class RouteCount:
    topic: str
    pending: int
    dead: int


@dataclass(frozen=True)
class LeaseHeld:
    shard: int
    owner: str
    fence: int
    seconds_left: float


@dataclass(frozen=True)
class BlockedHead:
    """A pending row in backoff: it holds its aggregate's later events back until then."""

    aggregate_type: str
    aggregate_id: str
    attempts: int
    reason: str
    retry_in_seconds: float


@dataclass
class Status:
    pending: int
    oldest_pending_age_seconds: float
    dead: int
    published: int
    routes: list[RouteCount] = field(default_factory=list)
    leases: list[LeaseHeld] = field(default_factory=list)
    blocked_count: int = 0
    blocked: list[BlockedHead] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "action": "status",
            "pending": self.pending,
            "oldest_pending_age_seconds": round(self.oldest_pending_age_seconds, 3),
            "dead": self.dead,
            "published": self.published,
            "topics": [r.__dict__ for r in self.routes],
            "leases": [
                {**lease.__dict__, "seconds_left": round(lease.seconds_left, 1)} for lease in self.leases
            ],
            "blocked_aggregates": self.blocked_count,
            "blocked": [
                {**head.__dict__, "retry_in_seconds": round(head.retry_in_seconds, 1)}
                for head in self.blocked
            ],
        }


@dataclass
class RedriveReport:
    redriven: int
    republished: int
    aggregates: int
    # Aggregates whose later events may already be deleted by retention: those cannot be sent
    # again after the redriven one, so consumers may see it after them.
    order_at_risk: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, "action": "redrive", **self.__dict__}


@dataclass(frozen=True)
class DeadRow:
    id: int
    event_id: str
    aggregate_type: str
    aggregate_id: str
    shard: int


class OutboxAdmin:
    """Operator commands over the same connection handling as the relay's store."""

    def __init__(
        self, store: MySQLOutboxStore, topic_template: str, retention: RetentionSettings | None = None
    ) -> None:
        self.store = store
        self.sql = store.sql
        self.topic_template = topic_template
        self.retention = retention or RetentionSettings()

    # --- retention -----------------------------------------------------------------------

    def janitor(self, retention: RetentionSettings, deadline: float, progress: Progress) -> JanitorReport:
        """Delete PUBLISHED rows older than their retention and DEAD rows older than theirs, in
        batches of ``retention.batch_size``, each its own short autocommit statement."""
        report = JanitorReport()
        plan = (
            ("published", self.sql.purge_published, retention.published_seconds),
            ("dead", self.sql.purge_dead, retention.dead_seconds),
        )
        for shard in self.store.shard_ids():
            for kind, statement, keep_seconds in plan:
                while True:
                    if time.monotonic() >= deadline:
                        report.stopped_by = "deadline"
                        progress(f"stopped at the deadline after {report.batches} batches")
                        return report
                    deleted = self._execute(statement, (shard, keep_seconds, retention.batch_size))
                    report.batches += 1
                    if kind == "published":
                        report.deleted_published += deleted
                    else:
                        report.deleted_dead += deleted
                    if (
                        deleted
                        and (report.deleted_published + report.deleted_dead)
                        % (REPORT_EVERY_BATCHES * retention.batch_size)
                        < deleted
                    ):
                        progress(
                            f"{report.batches} batches: {report.deleted_published} published and "
                            f"{report.deleted_dead} dead rows deleted (at shard {shard})"
                        )
                    if deleted < retention.batch_size:
                        break
                    time.sleep(BATCH_PAUSE_SECONDS)
        return report

    def dead_count(self) -> int:
        """How many DEAD rows the outbox holds (the janitor's gauge for the DEAD-rows alarm): a
        range of the shard index per shard, DEAD entries only; no row is read."""
        shards = self.store.shard_ids()
        if not shards:
            return 0

        def work(conn: pymysql.connections.Connection[Any]) -> int:
            with conn.cursor() as cur:
                cur.execute(self.sql.dead_count(len(shards)), shards)
                (count,) = cur.fetchone() or (0,)
                return int(count)

        return self.store.run(work, "count DEAD rows")

    # --- status --------------------------------------------------------------------------

    def status(self) -> Status:
        shards = self.store.shard_ids()
        stats = self.store.pending_stats()

        def work(conn: pymysql.connections.Connection[Any]) -> Status:
            with conn.cursor() as cur:
                cur.execute(self.sql.counts_by_route(len(shards)), shards)
                per_topic: dict[str, list[int]] = {}
                for aggregate_type, event_type, topic, status, count in cur.fetchall():
                    # Read as bytes and shown escaped: a row holding bytes that are not text cannot
                    # fail the status (it is dead-lettered, with the reason).
                    probe = _route_probe(decode(aggregate_type), decode(event_type))
                    name = shown(decode_nullable(topic) or topic_for(probe, self.topic_template))
                    counts = per_topic.setdefault(name, [0, 0])
                    counts[0 if status == "PENDING" else 1] += int(count)
                cur.execute(self.sql.published_count)
                (published,) = cur.fetchone() or (0,)
                cur.execute(self.sql.leases)
                leases = [
                    LeaseHeld(int(s), str(o or "-"), int(f), float(left)) for s, o, f, left in cur.fetchall()
                ]
                cur.execute(self.sql.blocked_count(len(shards)), shards)
                (blocked_count,) = cur.fetchone() or (0,)
                cur.execute(self.sql.blocked_heads(len(shards)), [*shards, BLOCKED_LISTED])
                blocked = [
                    BlockedHead(
                        shown(decode(t)),
                        shown(decode(a)),
                        int(n),
                        shown(decode(why or b"")),
                        float(left or 0),
                    )
                    for t, a, n, why, left in cur.fetchall()
                ]
            routes = [RouteCount(t, p, d) for t, (p, d) in sorted(per_topic.items())]
            return Status(
                pending=stats.pending,
                oldest_pending_age_seconds=stats.oldest_pending_age_seconds,
                dead=sum(r.dead for r in routes),
                published=int(published),
                routes=routes,
                leases=leases,
                blocked_count=int(blocked_count),
                blocked=blocked,
            )

        return self.store.run(work, "status")

    # --- DEAD rows: redrive and purge ----------------------------------------------------------

    def dead_rows(self, ids: Sequence[int] = ()) -> list[DeadRow]:
        def work(conn: pymysql.connections.Connection[Any]) -> list[DeadRow]:
            with conn.cursor() as cur:
                cur.execute(self.sql.dead_rows(len(ids)), list(ids))
                return [_dead_row(r) for r in cur.fetchall()]

        return self.store.run(work, "read DEAD rows")

    def dead_rows_for_events(self, event_ids: Sequence[str]) -> list[DeadRow]:
        def work(conn: pymysql.connections.Connection[Any]) -> list[DeadRow]:
            found: list[DeadRow] = []
            with conn.cursor() as cur:
                for event_id in event_ids:
                    cur.execute(self.sql.dead_rows_by_event_id, (raw(event_id),))
                    found += [_dead_row(r) for r in cur.fetchall()]
            return found

        return self.store.run(work, "find DEAD rows")

    def redrive(self, ids: Sequence[int], progress: Progress, wait_seconds: float = 10.0) -> RedriveReport:
        """DEAD rows back to PENDING, in their old place; their aggregates' later PUBLISHED
        events go out again after them, so every aggregate still ends in outbox order.

        Holds the affected shards' leases while it writes, so no relay is mid-pass on those
        aggregates; waits up to ``wait_seconds`` for running relays to give them back.
        """
        rows = self.dead_rows(ids)
        missing = sorted(set(ids) - {r.id for r in rows})
        if missing:
            raise AdminError(
                f"not DEAD (or not found): ids {', '.join(map(str, missing[:20]))}; nothing was changed"
            )
        if not rows:
            return RedriveReport(0, 0, 0)
        shards = sorted({r.shard for r in rows})
        token = uuid.uuid4().bytes
        progress(f"leasing {len(shards)} shard(s) so no relay publishes those aggregates meanwhile...")
        self._lease(token, shards, wait_seconds)
        try:
            report = self._redrive_under_lease(token, shards, rows)
        finally:
            self.store.release(token, shards, 0.0)
        progress(
            f"redrove {report.redriven} event(s) of {report.aggregates} aggregate(s); "
            f"{report.republished} later event(s) of those aggregates will be published again after them"
        )
        if report.order_at_risk:
            progress(
                f"warning: {len(report.order_at_risk)} aggregate(s) may have later events already deleted by "
                f"retention ({', '.join(report.order_at_risk[:10])}): those cannot go out again after the "
                "redriven event, so consumers may see it after them (compare `seq`)"
            )
        return report

    def _lease(self, token: bytes, shards: list[int], wait_seconds: float) -> None:
        give_up = time.monotonic() + wait_seconds
        held: set[int] = set()
        while True:
            for shard in shards:
                if shard not in held and self._execute(
                    self.sql.acquire_shard, (token, "redrive", micros(max(30.0, wait_seconds * 3)), shard)
                ):
                    held.add(shard)
            if len(held) == len(shards):
                return
            if time.monotonic() >= give_up:
                self.store.release(token, sorted(held), 0.0)
                busy = sorted(set(shards) - held)
                raise AdminError(
                    f"shard(s) {', '.join(map(str, busy))} stayed leased by a running relay for "
                    f"{wait_seconds:g}s; try again (nothing was changed)"
                )
            time.sleep(0.2)

    def _redrive_under_lease(self, token: bytes, shards: list[int], rows: list[DeadRow]) -> RedriveReport:
        first: dict[tuple[str, str], DeadRow] = {}
        for row in rows:  # rows are in id order: the first per aggregate is its earliest
            first.setdefault((row.aggregate_type, row.aggregate_id), row)

        def work(conn: pymysql.connections.Connection[Any]) -> RedriveReport:
            conn.begin()
            try:
                with conn.cursor() as cur:
                    cur.execute(self.sql.lock_shards(len(shards)), shards)
                    if any(held != token for _, held in cur.fetchall()):
                        conn.rollback()
                        raise AdminError("lost the shard lease while redriving; nothing was changed")
                    # Before the redrive clears dead_at: how long ago each aggregate's row died.
                    at_risk = [
                        shown(f"{row.aggregate_type}/{row.aggregate_id}")
                        for row in first.values()
                        if self._later_events_may_be_gone(cur, row)
                    ]
                    redriven = cur.execute(self.sql.redrive_dead(len(rows)), [r.id for r in rows])
                    republished = 0
                    for row in first.values():
                        republished += cur.execute(
                            self.sql.republish_after,
                            (row.shard, row.id, raw(row.aggregate_type), raw(row.aggregate_id)),
                        )
                conn.commit()
            except BaseException:
                self.store.rollback()
                raise
            return RedriveReport(redriven, republished, len(first), at_risk)

        return self.store.run(work, "redrive")

    def _later_events_may_be_gone(self, cur: Any, row: DeadRow) -> bool:
        """Later events of the aggregate went out after this one went DEAD (head-of-line), so the
        janitor may have deleted them once ``dead_at`` is older than the published retention;
        with retention 0 every published event is deleted at once."""
        if self.retention.published_seconds == 0:
            return True
        cur.execute(self.sql.dead_before, (row.id, self.retention.published_seconds))
        return bool(cur.fetchone())

    def purge_dead(self, ids: Sequence[int]) -> int:
        """Delete DEAD rows (after their dead letters were dealt with); one statement."""
        if not ids:
            return 0
        return self._execute(self.sql.purge_dead_ids(len(ids)), list(ids))

    def _execute(self, statement: str, params: Sequence[Any]) -> int:
        def work(conn: pymysql.connections.Connection[Any]) -> int:
            with conn.cursor() as cur:
                return int(cur.execute(statement, params))

        try:
            return self.store.run(work, statement.split(" ", 1)[0].lower())
        except StoreUnavailable as exc:
            raise AdminError(str(exc)) from exc


def _dead_row(r: Sequence[Any]) -> DeadRow:
    """A row of sql.DEAD_ROW_COLUMNS: its text as read (losslessly, rowtext.py), so that the keys
    given back to SQL are the bytes stored."""
    return DeadRow(int(r[0]), decode(r[1]), decode(r[2]), decode(r[3]), int(r[4]))


def _route_probe(aggregate_type: str, event_type: str) -> OutboxRecord:
    """A stand-in row to route an aggregate and event type through the topic template."""
    return OutboxRecord(0, "", aggregate_type, "", event_type, b"", None, None, None, 0, 0, True)
