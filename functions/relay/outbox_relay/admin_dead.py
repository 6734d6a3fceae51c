"""Operator work on DEAD rows: redrive, purge, the rows dead letters name, operator leases.

Every command acts on a fixed set of rows, chosen before it changes anything (ids given, or
DEAD rows up to an id the preview printed), and changes them in batches that are each one
statement or one transaction, with a checkpoint between two: an interrupt (``Interrupted`` from
``checkpoint``) or a failure leaves every batch either done or not started, and a re-run finishes
the work.  Leases taken here name their owner ``operator ...``, last ``OPERATOR_LEASE_SECONDS``
at a time (renewed before each batch), and are released in ``finally``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql

from .admin_mysql import AdminError
from .config import RetentionSettings
from .dlq_admin import Letter
from .ports import StoreUnavailable
from .rowtext import decode, raw, shown
from .sql import MAX_OUTBOX_ID
from .store_mysql import MySQLOutboxStore, micros

Progress = Callable[[str], None]
Checkpoint = Callable[[], None]

OPERATOR_LEASE_SECONDS = 30.0
OPERATOR_PREFIX = "operator "
# Rows per purge statement and per redrive transaction (whole aggregates, so a little more).
BATCH_ROWS = 1000
LEASE_POLL_SECONDS = 0.2


class Interrupted(Exception):
    """The operator interrupted the command at a checkpoint; ``str()`` says what was done."""


@dataclass(frozen=True)
class DeadRow:
    id: int
    event_id: str
    aggregate_type: str
    aggregate_id: str
    shard: int

    @property
    def aggregate(self) -> tuple[str, str]:
        return (self.aggregate_type, self.aggregate_id)


@dataclass
class RedriveReport:
    redriven: int = 0
    republished: int = 0
    aggregates: int = 0
    # Aggregates whose later events may already be deleted by retention: those cannot be sent
    # again after the redriven one, so consumers may see it after them.
    order_at_risk: list[str] = field(default_factory=list)
    # The ids redriven so far (their letters can go).
    done: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.__dict__.items() if k != "done"}
        return {"ok": True, "action": "redrive", **shown}


@dataclass
class Tally:
    deleted: int = 0


# What a letter is, matched against the outbox by both of its ids.
REDRIVABLE = "redrivable"  # names a DEAD row
STALE = "stale"  # its row is gone (purged, retention) or PUBLISHED: the letter is spent
# Its row is PENDING: a relay may mark it DEAD any moment (it sends the letter first, and a failed
# finalize or an abandoned send leaves the row PENDING with the letter sent), or it was redriven
# and is not published yet.  Left in the queue until one or the other.
PENDING = "pending"
UNMATCHED = "unmatched"  # the row with its outbox_id has another event_id, or it names no event_id
MALFORMED = "malformed"  # not a letter the relay wrote
KINDS = (REDRIVABLE, STALE, PENDING, UNMATCHED, MALFORMED)


@dataclass
class Sorted:
    """Letters by kind, and the DEAD rows the redrivable ones name."""

    letters: dict[str, list[Letter]] = field(default_factory=lambda: {k: [] for k in KINDS})
    rows: dict[int, DeadRow] = field(default_factory=dict)

    def counts(self) -> str:
        return ", ".join(f"{len(v)} {k}" for k, v in self.letters.items() if v) or "none"


def operator_host() -> str:
    """This host as operator leases name it (ASCII, one word)."""
    return "".join(socket.gethostname().encode("ascii", "replace").decode().split())[:64] or "-"


def operator_owner(command: str) -> str:
    """Who holds an operator lease, as ``status`` shows it (the column holds 128 ASCII bytes)."""
    return f"{OPERATOR_PREFIX}{command} {operator_host()} pid {os.getpid()}"[:128]


class DeadRowsAdmin:
    def __init__(self, store: MySQLOutboxStore, retention: RetentionSettings | None = None) -> None:
        self.store = store
        self.sql = store.sql
        self.retention = retention or RetentionSettings()

    # --- reading -------------------------------------------------------------------------

    def dead_rows(self, ids: Sequence[int] = (), max_id: int | None = None) -> list[DeadRow]:
        """DEAD rows in id order: those of ``ids``, or all (up to ``max_id``)."""

        def work(conn: pymysql.connections.Connection[Any]) -> list[DeadRow]:
            found: list[DeadRow] = []
            with conn.cursor() as cur:
                if ids:
                    for chunk in _chunks(sorted(set(ids)), BATCH_ROWS):
                        cur.execute(self.sql.dead_rows(len(chunk)), chunk)
                        found += [_dead_row(r) for r in cur.fetchall()]
                else:
                    cur.execute(self.sql.dead_rows_up_to, (max_id if max_id is not None else MAX_OUTBOX_ID,))
                    found = [_dead_row(r) for r in cur.fetchall()]
            return found

        return self.store.run(work, "read DEAD rows")

    def states(self, ids: Sequence[int]) -> dict[int, str]:
        """The status of each of ``ids`` that exists."""

        def work(conn: pymysql.connections.Connection[Any]) -> dict[int, str]:
            found: dict[int, str] = {}
            with conn.cursor() as cur:
                for chunk in _chunks(sorted(set(ids)), BATCH_ROWS):
                    cur.execute(self.sql.row_states(len(chunk)), chunk)
                    found.update((int(i), str(status)) for i, status in cur.fetchall())
            return found

        result: dict[int, str] = self.store.run(work, "read row states")
        return result

    def sort_letters(self, letters: Sequence[Letter]) -> Sorted:
        """What each letter names in the outbox, by ``outbox_id`` and ``event_id`` byte for byte."""
        out = Sorted()
        named = sorted({x.outbox_id for x in letters if x.outbox_id is not None})

        def work(conn: pymysql.connections.Connection[Any]) -> dict[int, tuple[DeadRow, str]]:
            rows: dict[int, tuple[DeadRow, str]] = {}
            with conn.cursor() as cur:
                for chunk in _chunks(named, BATCH_ROWS):
                    cur.execute(self.sql.letter_rows(len(chunk)), chunk)
                    for r in cur.fetchall():
                        row = _dead_row(r[:5])
                        rows[row.id] = (row, str(r[5]))
            return rows

        rows = self.store.run(work, "find the rows of dead letters") if named else {}
        for letter in letters:
            kind = MALFORMED
            if letter.outbox_id is not None:
                found = rows.get(letter.outbox_id)
                if letter.event_id is None:
                    kind = UNMATCHED
                elif found is None:
                    kind = STALE
                elif raw(found[0].event_id) != raw(letter.event_id):  # the bytes stored, exactly
                    kind = UNMATCHED
                elif found[1] == "DEAD":
                    kind = REDRIVABLE
                    out.rows[found[0].id] = found[0]
                elif found[1] == "PENDING":
                    kind = PENDING
                else:
                    kind = STALE
            out.letters[kind].append(letter)
        return out

    # --- redrive --------------------------------------------------------------------------

    def redrive_ids(
        self, ids: Sequence[int], progress: Progress, checkpoint: Checkpoint, wait_seconds: float
    ) -> RedriveReport:
        """Redrive exactly these rows: refused, changing nothing, unless every one is DEAD."""
        rows = self.dead_rows(ids)
        missing = sorted(set(ids) - {r.id for r in rows})
        if missing:
            raise AdminError(
                f"not DEAD (or not found): ids {', '.join(map(str, missing[:20]))}; nothing was changed"
            )
        return self.redrive(rows, progress, checkpoint, wait_seconds, RedriveReport())

    def redrive(
        self,
        rows: Sequence[DeadRow],
        progress: Progress,
        checkpoint: Checkpoint,
        wait_seconds: float,
        report: RedriveReport,
    ) -> RedriveReport:
        """DEAD rows back to PENDING, in their old place; their aggregates' later PUBLISHED events
        go out again after them, so every aggregate still ends in outbox order.

        Holds the affected shards' leases while it writes, so no relay is mid-pass on those
        aggregates; waits up to ``wait_seconds`` for running relays to give them back.  Each batch
        of whole aggregates is one transaction; ``report`` counts what is done, also when this
        raises."""
        if not rows:
            return report
        by_aggregate: dict[tuple[str, str], list[DeadRow]] = {}
        for row in sorted(rows, key=lambda r: r.id):
            by_aggregate.setdefault(row.aggregate, []).append(row)
        shards = sorted({r.shard for r in rows})
        with self.leased(shards, "redrive", wait_seconds, progress, checkpoint) as token:
            batches = list(_aggregate_batches(list(by_aggregate.values()), BATCH_ROWS))
            for n, batch in enumerate(batches, 1):
                checkpoint()
                self._renew(token, shards)
                self._redrive_batch(token, shards, batch, report)
                if len(batches) > 1:
                    progress(
                        f"batch {n}/{len(batches)}: {report.redriven} event(s) of "
                        f"{report.aggregates} aggregate(s) redriven"
                    )
        return report

    def _redrive_batch(
        self, token: bytes, shards: list[int], batch: list[list[DeadRow]], report: RedriveReport
    ) -> None:
        ids = [r.id for rows in batch for r in rows]
        batch_shards = sorted({rows[0].shard for rows in batch})

        def work(conn: pymysql.connections.Connection[Any]) -> tuple[int, int, list[str]]:
            conn.begin()
            try:
                with conn.cursor() as cur:
                    cur.execute(self.sql.lock_shards(len(batch_shards)), batch_shards)
                    if any(held != token for _, held in cur.fetchall()):
                        raise AdminError("lost the shard lease while redriving; this batch was not changed")
                    # Before the redrive clears dead_at: how long ago each aggregate's first row died.
                    at_risk = [
                        shown(f"{rows[0].aggregate_type}/{rows[0].aggregate_id}")
                        for rows in batch
                        if self._later_events_may_be_gone(cur, rows[0])
                    ]
                    redriven = cur.execute(self.sql.redrive_dead(len(ids)), ids)
                    republished = 0
                    for rows in batch:
                        first = rows[0]
                        kind, key = raw(first.aggregate_type), raw(first.aggregate_id)
                        republished += cur.execute(
                            self.sql.republish_after, (first.shard, kind, key, first.id, kind, key)
                        )
                conn.commit()
            except BaseException:
                self.store.rollback()
                raise
            return redriven, republished, at_risk

        redriven, republished, at_risk = self._run(work, "redrive")
        report.redriven += redriven
        report.republished += republished
        report.aggregates += len(batch)
        report.order_at_risk += at_risk
        report.done += ids

    def _later_events_may_be_gone(self, cur: Any, row: DeadRow) -> bool:
        """Later events of the aggregate went out after this one went DEAD (head-of-line), so the
        janitor may have deleted them once ``dead_at`` is older than the published retention;
        with retention 0 every published event is deleted at once."""
        if self.retention.published_seconds == 0:
            return True
        cur.execute(self.sql.dead_before, (row.id, self.retention.published_seconds))
        return bool(cur.fetchone())

    # --- purge ----------------------------------------------------------------------------

    def purge(self, ids: Sequence[int], progress: Progress, checkpoint: Checkpoint, tally: Tally) -> None:
        """Delete these rows where they are still DEAD, a batch per statement; ``tally`` counts
        them as they go (also when this raises).  A row redriven meanwhile is left alone."""
        chunks = list(_chunks(sorted(set(ids)), BATCH_ROWS))
        for n, chunk in enumerate(chunks, 1):
            checkpoint()
            tally.deleted += self._execute(self.sql.purge_dead_ids(len(chunk)), chunk, "purge")
            if len(chunks) > 1:
                progress(f"batch {n}/{len(chunks)}: {tally.deleted} DEAD row(s) deleted")

    # --- leases ---------------------------------------------------------------------------

    def leased(
        self, shards: list[int], command: str, wait_seconds: float, progress: Progress, checkpoint: Checkpoint
    ) -> _LeaseScope:
        return _LeaseScope(self, shards, command, wait_seconds, progress, checkpoint)

    def _renew(self, token: bytes, shards: list[int]) -> None:
        lease = micros(OPERATOR_LEASE_SECONDS)
        self._execute(self.sql.renew_shards(len(shards)), (lease, token, *shards), "renew")

    def holders(self, shards: Sequence[int]) -> list[tuple[int, str, float]]:
        """Live leases of ``shards`` (all when empty): shard, owner, seconds left."""

        def work(conn: pymysql.connections.Connection[Any]) -> list[tuple[int, str, float]]:
            with conn.cursor() as cur:
                cur.execute(self.sql.leases)
                found: list[tuple[int, str, float]]
                found = [
                    (int(s), str(o or "-"), float(left))
                    for s, o, _f, left in cur.fetchall()
                    if not shards or int(s) in shards
                ]
                return found

        held: list[tuple[int, str, float]] = self._run(work, "read leases")
        return held

    def unlease(self, shards: Sequence[int]) -> int:
        """Release operator leases of ``shards``; a relay's live lease is never touched."""
        return self._execute(self.sql.release_operator_leases(len(shards)), list(shards), "unlease")

    def _run(self, work: Callable[[pymysql.connections.Connection[Any]], Any], what: str) -> Any:
        return self.store.run(work, what)

    def _execute(self, statement: str, params: Sequence[Any], what: str) -> int:
        def work(conn: pymysql.connections.Connection[Any]) -> int:
            with conn.cursor() as cur:
                return int(cur.execute(statement, params))

        return int(self._run(work, what))


class _LeaseScope:
    """Operator leases on ``shards`` for a ``with`` block: taken (waiting for relays up to a
    bound), released in ``__exit__`` whatever happened, including an interrupt mid-wait."""

    def __init__(
        self,
        admin: DeadRowsAdmin,
        shards: list[int],
        command: str,
        wait_seconds: float,
        progress: Progress,
        checkpoint: Checkpoint,
    ) -> None:
        self.admin, self.shards, self.command = admin, shards, command
        self.wait_seconds, self.progress, self.checkpoint = wait_seconds, progress, checkpoint
        self.token = uuid.uuid4().bytes

    def __enter__(self) -> bytes:
        admin, sql = self.admin, self.admin.sql
        give_up = time.monotonic() + self.wait_seconds
        owner = operator_owner(self.command)
        held: set[int] = set()
        told = False
        try:
            while True:
                for shard in self.shards:
                    if shard not in held and admin._execute(
                        sql.acquire_shard, (self.token, owner, micros(OPERATOR_LEASE_SECONDS), shard), "lease"
                    ):
                        held.add(shard)
                if len(held) == len(self.shards):
                    return self.token
                if held:  # the shards taken must not lapse while the others are waited for
                    admin._renew(self.token, sorted(held))
                busy = [h for h in admin.holders(sorted(set(self.shards) - held))]
                if time.monotonic() >= give_up:
                    who = "; ".join(f"shard {s} by {o} for {left:.0f}s more" for s, o, left in busy[:5])
                    raise AdminError(
                        f"shard(s) still leased after waiting {self.wait_seconds:g}s "
                        f"({who or 'released just now'}); nothing was changed: try again, or raise --wait"
                    )
                if not told:
                    told = True
                    self.progress(
                        f"waiting up to {self.wait_seconds:g}s for {len(busy)} shard(s) leased by running "
                        f"relays to be given back..."
                    )
                self.checkpoint()
                time.sleep(LEASE_POLL_SECONDS)
        except BaseException:
            self._release()
            raise

    def __exit__(self, *_exc: object) -> None:
        self._release()

    def _release(self) -> None:
        try:
            self.admin.store.release(self.token, None, 0.0)
        except StoreUnavailable:
            # They end by themselves after OPERATOR_LEASE_SECONDS; `unlease` ends them now.
            self.progress(
                f"could not release the operator lease (it ends within {OPERATOR_LEASE_SECONDS:g}s, "
                "or run `outbox-relay unlease`)"
            )


def _dead_row(r: Sequence[Any]) -> DeadRow:
    """A row of sql.DEAD_ROW_COLUMNS: its text as read (losslessly, rowtext.py), so that the keys
    given back to SQL are the bytes stored."""
    return DeadRow(int(r[0]), decode(r[1]), decode(r[2]), decode(r[3]), int(r[4]))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _aggregate_batches(aggregates: list[list[DeadRow]], rows: int) -> Iterator[list[list[DeadRow]]]:
    """Whole aggregates, about ``rows`` rows per batch."""
    batch: list[list[DeadRow]] = []
    size = 0
    for group in aggregates:
        if batch and size + len(group) > rows:
            yield batch
            batch, size = [], 0
        batch.append(group)
        size += len(group)
    if batch:
        yield batch
