"""The outbox store on MySQL / Aurora MySQL / MariaDB, with PyMySQL.

Autocommit for reads and single compare-and-set statements; one explicit short transaction for
the fenced finalize.  Never holds a transaction open across a Kafka call.  Deadlocks, lock-wait
timeouts and lost connections are retried (every write is idempotent); a server that no longer
takes writes (a failover's demoted writer) gets one more try on a new connection; anything else,
or too many failures, becomes :class:`StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any, TypeAlias, TypeVar

import pymysql
import pymysql.cursors

from .finalize_mysql import apply_plan
from .model import AggregateKey, FinalizePlan, FinalizeResult, OutboxRecord, PendingStats
from .ports import CredentialsUnavailable, StoreUnavailable
from .rowtext import decode, decode_nullable, raw
from .sql import SESSION_SETUP, SHARD_COUNT, OutboxSql
from .watchdog import Watchdog

log = logging.getLogger("outbox_relay")
T = TypeVar("T")

DEADLOCK, LOCK_WAIT_TIMEOUT = 1213, 1205
# Server gone / lost during query / can't connect / lost (various) / server shutdown.
CONNECTION_LOST = frozenset({2003, 2006, 2013, 2014, 2055, 1053, 1927, 4031})
# The server cannot take writes: after an Aurora failover the old writer restarts as a reader
# while DNS still points some clients at it.  1290 ER_OPTION_PREVENTS_STATEMENT ("--read-only":
# MySQL/MariaDB read_only, and what Aurora readers answer), 1836 ER_READ_ONLY_MODE and 1874
# ER_INNODB_READ_ONLY (innodb_read_only, an Aurora reader's setting), 1036 ER_OPEN_AS_READONLY
# (InnoDB refusing a row write under innodb_read_only), 1792 ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION.
READ_ONLY = frozenset({1290, 1836, 1874, 1036, 1792})
RETRIES = 4
# A statement (and a connection's handshake) may not block longer than this ...
STATEMENT_TIMEOUT_SECONDS = 30.0
# ... nor past the store's deadline by more than this (the handler's stop
# margin is 1 s: what the Lambda keeps after the deadline for its last statements).
PAST_DEADLINE_SECONDS = 0.5
ACQUIRE_LOCK_WAIT_SECONDS = 1
# A warm connection's ping answers in milliseconds: one that does not within this is dropped
# (a reconnect costs less than waiting on a vanished peer), and within the deadline in any case.
PING_SECONDS = 1.0

Connect: TypeAlias = "Callable[[], pymysql.connections.Connection[Any]]"


def micros(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def error_code(exc: BaseException) -> int:
    """The server's (or PyMySQL's) error number of ``exc``; 0 when it has none."""
    args = exc.args if isinstance(exc, pymysql.err.MySQLError) else ()
    return args[0] if args and isinstance(args[0], int) else 0


class Recovery(Enum):
    """What :meth:`MySQLOutboxStore.run` does after a failed attempt."""

    ROLLBACK_AND_RETRY = "rollback_and_retry"  # deadlock, lock wait timeout: the connection is fine
    RECONNECT = "reconnect"  # the connection is gone
    RECONNECT_ONCE = "reconnect_once"  # a read-only server: a new connection may reach the new writer
    FAIL = "fail"  # a missing table, a privilege, bad data, access denied: not transient


def recovery(exc: BaseException) -> Recovery:
    """How to recover from ``exc``, raised by a statement or by opening the connection."""
    if isinstance(exc, pymysql.err.InterfaceError | OSError):
        return Recovery.RECONNECT
    if not isinstance(exc, pymysql.err.MySQLError):
        return Recovery.FAIL
    code = error_code(exc)
    if code in READ_ONLY:
        return Recovery.RECONNECT_ONCE
    if not isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError):
        return Recovery.FAIL
    if code in (DEADLOCK, LOCK_WAIT_TIMEOUT):
        return Recovery.ROLLBACK_AND_RETRY
    if code in CONNECTION_LOST or code == 0:
        return Recovery.RECONNECT
    return Recovery.FAIL


class MySQLOutboxStore:
    """:class:`~outbox_relay.ports.OutboxStore` on one PyMySQL connection (not thread-safe)."""

    def __init__(
        self,
        connect: Connect,
        sql: OutboxSql,
        lock_wait_timeout_seconds: int = 5,
        delete_on_publish: bool = False,
    ) -> None:
        self._connect = connect
        # Retention 0: a published row is deleted in the finalize instead of marked PUBLISHED.
        self.delete_on_publish = delete_on_publish
        self.sql = sql
        self._lock_wait = lock_wait_timeout_seconds
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._shards: list[int] | None = None
        # Monotonic seconds: statements and retries end by then (plus PAST_DEADLINE_SECONDS).
        self.deadline: float | None = None
        self._watchdog = Watchdog()

    # --- connection handling ------------------------------------------------------------

    def _connection(self) -> pymysql.connections.Connection[Any]:
        if self._conn is None:
            conn = self._connect()
            try:
                self._bound(conn)
                with self._guarded(conn), conn.cursor() as cur:
                    cur.execute(SESSION_SETUP[0])
                    cur.execute(SESSION_SETUP[1])
                    cur.execute(SESSION_SETUP[2], (self._lock_wait,))
            except BaseException:
                with contextlib.suppress(pymysql.err.Error):
                    conn.close()
                raise
            self._conn = conn
        return self._conn

    def check(self) -> None:
        """Ping a warm connection at the start of an invocation (bounded by its deadline, not by
        the timeouts the last invocation left); drop it if it went stale."""
        if self._conn is None:
            return
        if self._past_deadline():
            self.close()  # no time to ping: a statement would open a new one, if any may
            return
        seconds = min(PING_SECONDS, self.statement_timeout())
        try:
            self._bound(self._conn, seconds)
            with self._guarded(self._conn, time.monotonic() + seconds):
                self._conn.ping(reconnect=False)
        except pymysql.err.Error:
            self.close()

    @contextlib.contextmanager
    def _guarded(
        self, conn: pymysql.connections.Connection[Any], until: float | None = None
    ) -> Iterator[None]:
        """Cut whatever ``conn`` does in this block at ``until``, by default at the deadline, or
        once past it, after PAST_DEADLINE_SECONDS, as statement_timeout: the socket timeouts
        bound each read, not a call (see watchdog.py)."""
        if until is None and self.deadline is not None:
            until = max(self.deadline, time.monotonic()) + PAST_DEADLINE_SECONDS
        fired = self._watchdog.fired
        try:
            with self._watchdog.guard(conn, until):
                yield
        finally:
            if self._watchdog.fired != fired:  # cut, perhaps just as the block ended: not reusable
                if conn is self._conn:
                    self._conn = None
                with contextlib.suppress(pymysql.err.Error):
                    conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                conn.close()

    def run(self, work: Callable[[pymysql.connections.Connection[Any]], T], what: str) -> T:
        """Run ``work`` on the connection; retry deadlocks, lock waits and lost connections
        (``work`` must be idempotent); anything else raises :class:`StoreUnavailable`.

        A server that cannot take writes (a writer demoted by a failover) is left at once: the
        connection is closed and ``work`` gets one more try on a new connection, which resolves
        the endpoint again.  That works when DNS already names the new writer (a warm connection
        from before the failover).  If the new one is read-only too, DNS has not moved yet (up to
        ~30 s on Aurora) and retrying now fails alike: this raises, and a later operation or
        invocation connects anew."""
        last: Exception | None = None
        read_only_seen = False
        reached = False  # did any attempt get a connection (so ``work`` may have run in part)?
        for attempt in range(RETRIES):
            try:
                if self._conn is None and self._past_deadline():
                    # A new connection (a handshake, the session set-up) would not fit any more;
                    # statements on an open one are bounded by _bound.
                    raise StoreUnavailable(f"{what}: the invocation's deadline has passed", reached)
                conn = self._connection()
                reached = True
                self._bound(conn)
                with self._guarded(conn):
                    return work(conn)
            except CredentialsUnavailable as exc:  # the password's secret: retrying now fails alike
                raise StoreUnavailable(f"{what}: {exc}", reached) from exc
            except (pymysql.err.MySQLError, OSError) as exc:
                last = exc
                step = recovery(exc)
                if step is Recovery.ROLLBACK_AND_RETRY:
                    self.rollback()
                elif step is Recovery.FAIL:
                    self.rollback()
                    raise StoreUnavailable(f"{what}: {_describe(exc)}", reached) from exc
                else:
                    self.close()
                    if step is Recovery.RECONNECT_ONCE:
                        if read_only_seen:
                            raise StoreUnavailable(f"{what}: {_describe(exc)}", reached) from exc
                        read_only_seen = True
            if self.deadline is not None and time.monotonic() >= self.deadline:
                break  # no retry past the deadline: the invocation is about to end
            log.warning(
                "database retry", extra={"operation": what, "attempt": attempt + 1, "error": _describe(last)}
            )
            time.sleep(random.uniform(0.0, 0.05 * 2**attempt))
        raise StoreUnavailable(f"{what}: {_describe(last)}", reached)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline + PAST_DEADLINE_SECONDS

    def statement_timeout(self) -> float:
        """How long the next statement (or connect) may block: 30 s, and at most until just past
        the deadline."""
        seconds = STATEMENT_TIMEOUT_SECONDS
        if self.deadline is not None:
            left = self.deadline + PAST_DEADLINE_SECONDS - time.monotonic()
            seconds = min(seconds, max(PAST_DEADLINE_SECONDS, left))
        return seconds

    def _bound(self, conn: pymysql.connections.Connection[Any], seconds: float | None = None) -> None:
        """Cap the socket timeouts of the next statements (by the deadline unless ``seconds``).
        PyMySQL applies them to each socket read and write; _guarded bounds the whole call."""
        seconds = self.statement_timeout() if seconds is None else seconds
        # PyMySQL has no public setter for them.
        setattr(conn, "_read_timeout", seconds)  # noqa: B010
        setattr(conn, "_write_timeout", seconds)  # noqa: B010

    def rollback(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except pymysql.err.Error:
                self.close()

    # --- shard leases -------------------------------------------------------------------

    def shard_ids(self) -> list[int]:
        """Every shard: the SHARD_COUNT the generated column makes, and any other row of the shard
        table.  A shard whose row was deleted still holds rows: the counts must not miss them."""
        if self._shards is None:
            rows = self._shard_rows()
            self._shards = sorted(set(rows) | set(range(SHARD_COUNT)))
        return self._shards

    def missing_shards(self) -> list[int]:
        """Shards without a row in the shard table: no relay can lease them until migrate or a
        relay's next acquire puts the row back."""
        present = set(self._shard_rows())
        return [shard for shard in range(SHARD_COUNT) if shard not in present]

    def _shard_rows(self) -> list[int]:
        def work(conn: pymysql.connections.Connection[Any]) -> list[int]:
            with conn.cursor() as cur:
                cur.execute(self.sql.all_shards)
                return [int(row[0]) for row in cur.fetchall()]

        return self.run(work, "list shards")

    def acquire_shards(
        self, token: bytes, owner: str, lease_seconds: float, limit: int, exclude: Collection[int]
    ) -> list[int]:
        def work(conn: pymysql.connections.Connection[Any]) -> list[int]:
            with conn.cursor() as cur:
                cur.execute(self.sql.shard_rows)
                rows = cur.fetchall()
                present = {int(row[0]) for row in rows}
                missing = [shard for shard in range(SHARD_COUNT) if shard not in present]
                if missing:
                    # A deleted row hides its shard's pending rows from every relay: put it back
                    # (free; idempotent, and only when one is missing).
                    cur.execute(self.sql.restore_shards(len(missing)), missing)
                    log.warning("shard rows restored", extra={"shards": missing})
                free = [int(row[0]) for row in rows if row[1]] + missing
                free = [shard for shard in free if shard not in exclude]
                random.shuffle(free)  # concurrent invocations spread over the shards
                taken = 0
                # A free shard's row is locked only by its expired holder's last finalize (a few
                # ms): wait briefly, then leave that shard for later and take the others.
                cur.execute(SESSION_SETUP[2], (ACQUIRE_LOCK_WAIT_SECONDS,))
                try:
                    for shard in free:
                        if limit and taken >= limit:
                            break
                        if self.deadline is not None and time.monotonic() >= self.deadline:
                            break  # each busy shard may cost a lock wait: none past the deadline
                        try:
                            lease = (token, owner, micros(lease_seconds), shard)
                            taken += cur.execute(self.sql.acquire_shard, lease)
                        except pymysql.err.OperationalError as exc:
                            if error_code(exc) not in (LOCK_WAIT_TIMEOUT, DEADLOCK):
                                raise
                            log.warning("shard row locked: skipped for now", extra={"shard": shard})
                finally:
                    cur.execute(SESSION_SETUP[2], (self._lock_wait,))
                # Authoritative even when an acquire's outcome was lost with the connection.
                cur.execute(self.sql.owned_shards, (token,))
                return [int(row[0]) for row in cur.fetchall()]

        return self.run(work, "acquire shards")

    def release(self, token: bytes, shards: Sequence[int] | None, grace_seconds: float) -> None:
        if shards is not None and not shards:
            return
        listed = list(shards or ())

        def work(conn: pymysql.connections.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.execute(self.sql.release_shards(len(listed)), (micros(grace_seconds), token, *listed))

        self.run(work, "release shards")

    # --- reading ------------------------------------------------------------------------

    def read_heads(
        self,
        cursors: Mapping[int, int],
        limit: int,
        exclude: Mapping[int, Sequence[int]] | None = None,
        skip: Mapping[int, Collection[AggregateKey]] | None = None,
    ) -> list[OutboxRecord]:
        if not cursors:
            return []
        params: list[int | bytes] = []
        excluded: list[int] = []
        skipped: list[int] = []
        for shard, after in cursors.items():
            ids = (exclude or {}).get(shard, ())
            keys = (skip or {}).get(shard, ())
            params += (shard, after, *ids)
            for aggregate_type, aggregate_id in keys:
                params += (raw(aggregate_type), raw(aggregate_id))  # the bytes read
            params.append(limit)
            excluded.append(len(ids))
            skipped.append(len(keys))

        def work(conn: pymysql.connections.Connection[Any]) -> list[OutboxRecord]:
            with conn.cursor() as cur:
                cur.execute(self.sql.read_heads(excluded, skipped), params)
                rows = cur.fetchall()
            return [_record(r) for r in sorted(rows, key=lambda r: (r[12], r[0]))]

        return self.run(work, "read pending rows")

    def load_bodies(self, ids: Sequence[int]) -> dict[int, tuple[bytes, str | None]]:
        if not ids:
            return {}

        def work(conn: pymysql.connections.Connection[Any]) -> dict[int, tuple[bytes, str | None]]:
            with conn.cursor() as cur:
                cur.execute(self.sql.load_bodies(len(ids)), list(ids))
                return {int(r[0]): (bytes(r[1]), decode_nullable(r[2])) for r in cur.fetchall()}

        return self.run(work, "load large rows")

    def read_due_heads(
        self, shards: Sequence[int], limit: int, exclude: Mapping[int, Sequence[int]] | None = None
    ) -> list[OutboxRecord]:
        if not shards:
            return []
        in_flight = {i for ids in (exclude or {}).values() for i in ids}

        def work(conn: pymysql.connections.Connection[Any]) -> list[OutboxRecord]:
            with conn.cursor() as cur:
                cur.execute(self.sql.aggregate_heads(len(shards)), [v for s in shards for v in (s, limit)])
                heads = [_record(r) for r in cur.fetchall()]
                # An aggregate whose head is in flight is read again once that finalize is done.
                due = [h for h in heads if h.due and h.id not in in_flight]
                rows = [h for h in heads if not h.due]
                if due:
                    per = -(-limit // len(due))  # every due aggregate gets its share of the page
                    params: list[int | str | bytes] = []
                    for h in due:
                        # The bytes read (any bytes: a key that is not UTF-8 must be found too).
                        t, a = raw(h.aggregate_type), raw(h.aggregate_id)
                        params += (h.shard, t, a, t, a, per)
                    cur.execute(self.sql.aggregate_rows(len(due)), params)
                    rows += [_record(r) for r in cur.fetchall()]
            return sorted(rows, key=lambda r: (r.shard, r.id))

        return self.run(work, "read due heads")

    def pending_stats(self) -> PendingStats:
        shards = self.shard_ids()

        def work(conn: pymysql.connections.Connection[Any]) -> PendingStats:
            with conn.cursor() as cur:
                cur.execute(self.sql.pending_stats(len(shards)), shards)
                count, first = cur.fetchone() or (0, None)
                age = 0.0
                if first is not None:
                    cur.execute(self.sql.age_of, (first,))
                    row = cur.fetchone()
                    age = int(row[0]) / 1_000_000 if row and row[0] is not None else 0.0
                return PendingStats(int(count), age)

        return self.run(work, "read pending stats")

    # --- the fenced finalize ------------------------------------------------------------

    def finalize(
        self, token: bytes, shards: Sequence[int], plan: FinalizePlan, lease_seconds: float
    ) -> FinalizeResult:
        if not shards:
            return FinalizeResult(0, 0, 0, frozenset())

        def work(conn: pymysql.connections.Connection[Any]) -> FinalizeResult:
            conn.begin()
            try:
                with conn.cursor() as cur:
                    # The fence: a takeover must wait for these locks, and if it committed
                    # first we see its token here and touch nothing of that shard.
                    cur.execute(self.sql.lock_shards(len(shards)), list(shards))
                    kept = [int(s) for s, held in cur.fetchall() if held == token]
                    lost = frozenset(shards) - frozenset(kept)
                    if not kept:
                        conn.rollback()
                        return FinalizeResult(0, 0, 0, lost)
                    published, retried, dead = apply_plan(cur, self.sql, plan, kept, self.delete_on_publish)
                    cur.execute(self.sql.renew_shards(len(kept)), (micros(lease_seconds), token, *kept))
                conn.commit()
            except BaseException:
                self.rollback()
                raise
            return FinalizeResult(published, retried, dead, lost)

        return self.run(work, "finalize")


def _record(r: Sequence[Any]) -> OutboxRecord:
    """A row of the head read (sql.ROW_COLUMNS, then ``due``); its text columns come as bytes and
    are decoded losslessly (rowtext.py): whatever they hold, this never raises."""
    payload, payload_size, headers, headers_size = r[5], int(r[6]), r[8], r[9]
    loaded = payload is not None and (headers is not None or headers_size is None)
    return OutboxRecord(
        id=int(r[0]),
        event_id=decode(r[1]),
        aggregate_type=decode(r[2]),
        aggregate_id=decode(r[3]),
        event_type=decode(r[4]),
        payload=bytes(payload) if loaded else b"",
        topic=decode_nullable(r[7]),
        headers=decode_nullable(headers) if loaded else None,
        seq=r[10],
        attempts=int(r[11]),
        shard=int(r[12]),
        due=bool(r[13]),
        wait_seconds=int(r[14] or 0) / 1_000_000,
        payload_size=payload_size,
        headers_size=int(headers_size or 0),
        loaded=loaded,
    )


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"
