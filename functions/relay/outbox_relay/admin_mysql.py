"""Operator work on the outbox: retention (the janitor) and status (DEAD rows: admin_dead.py).

Every change is either one statement or one transaction: a failed command changes nothing, or
(the janitor) stops between two committed batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql

from .config import RetentionSettings
from .messages import topic_for
from .model import BLOCKED_LISTED, OutboxRecord
from .ports import StoreUnavailable
from .rowtext import decode, decode_nullable, shown
from .store_mysql import MySQLOutboxStore

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
    # Shards without a lease row: counted above, but no relay leases them until it is restored.
    missing_shards: list[int] = field(default_factory=list)

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
            "missing_shard_rows": self.missing_shards,
        }


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

    def janitor(
        self,
        retention: RetentionSettings,
        deadline: float,
        progress: Progress,
        report: JanitorReport | None = None,
    ) -> JanitorReport:
        """Delete PUBLISHED rows older than their retention and DEAD rows older than theirs, in
        batches of ``retention.batch_size``, each its own short autocommit statement.  ``report``
        (counted into as it goes) tells the caller what was done when this raises."""
        report = JanitorReport() if report is None else report
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
        shards = self.store.shard_ids()  # every shard, whether its lease row exists or not
        stats = self.store.pending_stats()
        missing = self.store.missing_shards()

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
                missing_shards=missing,
            )

        return self.store.run(work, "status")

    def _execute(self, statement: str, params: Sequence[Any]) -> int:
        def work(conn: pymysql.connections.Connection[Any]) -> int:
            with conn.cursor() as cur:
                return int(cur.execute(statement, params))

        try:
            return self.store.run(work, statement.split(" ", 1)[0].lower())
        except StoreUnavailable as exc:
            raise AdminError(str(exc)) from exc


def _route_probe(aggregate_type: str, event_type: str) -> OutboxRecord:
    """A stand-in row to route an aggregate and event type through the topic template."""
    return OutboxRecord(0, "", aggregate_type, "", event_type, b"", None, None, None, 0, 0, True)
