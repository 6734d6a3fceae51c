"""The simulated database: InnoDB visibility as it is, behind the relay's OutboxStore port.

* Ids are taken at INSERT (auto-increment, never reused: a rollback leaves a gap) and a row is
  visible only once its transaction commits, so writers commit out of id order.
* Writers of one aggregate are serialized (the README's contract: they lock the aggregate first);
  writers of different aggregates are not.
* Each store call is a statement (or the finalize's one transaction) with a round trip on each
  side of the moment it takes effect: other actors run in between, as on a real server.
* Faults: a dropped connection before the statement (nothing applied), a COMMIT whose
  acknowledgement is lost (applied, then the call fails), a stalled statement (bounded by the store's
  deadline as MySQLOutboxStore bounds it), a read-only window (a failover's demoted writer).
* Text columns hold bytes, as the server does: a writer may store bytes that are not UTF-8.
"""

from __future__ import annotations

import bisect
import itertools
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from outbox_relay.model import AggregateKey, FinalizePlan, FinalizeResult, OutboxRecord, PendingStats
from outbox_relay.ports import StoreUnavailable
from outbox_relay.rowtext import decode, raw

from .world import World

T = TypeVar("T")
SHARDS = 16
PAST_DEADLINE_SECONDS = 0.5  # as store_mysql: a statement ends by the deadline plus this


@dataclass(eq=False)
class Row:
    id: int
    event_id: bytes
    aggregate_type: bytes
    aggregate_id: bytes
    event_type: bytes
    payload: bytes
    topic: bytes | None
    headers: bytes | None
    seq: int | None
    shard: int
    committed: bool = False
    status: str = "PENDING"
    attempts: int = 0
    available_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0

    @property
    def key(self) -> tuple[bytes, bytes]:
        return (self.aggregate_type, self.aggregate_id)


@dataclass
class Lease:
    token: bytes | None = None
    owner: str | None = None
    until: float = 0.0


@dataclass
class StoreFaults:
    """Per-statement fault rates (swarm: a seed turns each on or off)."""

    drop: float = 0.0  # connection lost before the statement: nothing applied
    lost_ack: float = 0.0  # applied, then the answer is lost
    stall: float = 0.0  # the statement hangs (until the store's bound)
    slow: float = 0.0  # a slow statement (up to a second)
    read_only_windows: list[tuple[float, float]] = field(default_factory=list)


# Called when the finalize commits, with the rows it changed: the scenario checks its invariants
# (published only after an acknowledged record, dead only after an acknowledged letter, charges).
FinalizeHook = Callable[[bytes, FinalizePlan, list[Row]], None]


class Database:
    """The shared server state: rows, shard leases, the server's clock."""

    def __init__(self, world: World, clock_skew: float = 0.0) -> None:
        self.world = world
        self.skew = clock_skew
        self.rows: dict[int, Row] = {}
        self.next_id = 1
        self.leases = {shard: Lease() for shard in range(SHARDS)}
        self.faults = StoreFaults()
        self.quiet = False  # faults off (the liveness phase)
        self.on_finalize: FinalizeHook | None = None
        self.aggregate_locks: dict[tuple[bytes, bytes], list[Any]] = {}  # held -> waiters
        # What one load of bodies may bring at most (the relay's byte budget), and what broke it.
        self.max_batch_bytes: int | None = None
        self.memory_breaches: list[str] = []
        # Committed PENDING rows' ids per shard, in id order (the shard index, as InnoDB's).
        self.pending: dict[int, list[int]] = {shard: [] for shard in range(SHARDS)}
        # The same per aggregate (the index the heads query walks): shard -> key -> ids.
        self.pending_by_key: dict[int, dict[tuple[bytes, bytes], list[int]]] = {
            shard: {} for shard in range(SHARDS)
        }

    def db_now(self) -> float:
        return self.world.now + self.skew

    def read_only(self) -> bool:
        now = self.world.now
        return not self.quiet and any(a <= now < b for a, b in self.faults.read_only_windows)

    # --- the writers' side (an application transaction) -----------------------------------

    def insert(self, columns: dict[str, object]) -> Row:
        """INSERT: the id is taken now; the row is invisible until :meth:`commit`."""
        aggregate_id = columns["aggregate_id"]
        assert isinstance(aggregate_id, bytes)
        row = Row(
            id=self.next_id,
            shard=zlib.crc32(aggregate_id) % SHARDS,
            created_at=self.db_now(),
            **columns,  # type: ignore[arg-type]
        )
        self.next_id += 1
        self.rows[row.id] = row
        return row

    def commit(self, rows: Sequence[Row]) -> None:
        now = self.db_now()
        for row in rows:
            row.committed = True
            row.created_at = now
            bisect.insort(self.pending[row.shard], row.id)
            bisect.insort(self.pending_by_key[row.shard].setdefault(row.key, []), row.id)

    def settle(self, row: Row, status: str) -> None:
        """A PENDING row becomes PUBLISHED or DEAD: out of the shard index."""
        row.status = status
        ids = self.pending[row.shard]
        at = bisect.bisect_left(ids, row.id)
        if at < len(ids) and ids[at] == row.id:
            del ids[at]
            mine = self.pending_by_key[row.shard][row.key]
            mine.remove(row.id)
            if not mine:
                del self.pending_by_key[row.shard][row.key]

    def rollback(self, rows: Sequence[Row]) -> None:
        for row in rows:
            del self.rows[row.id]

    def visible(self) -> list[Row]:
        return [r for r in self.rows.values() if r.committed]


class SimStore:
    """One connection of one process: the :class:`~outbox_relay.ports.OutboxStore` the relay uses.

    ``decode`` turns a row's stored bytes into the record the relay reads, exactly as the real
    store does (so a row the real store cannot decode cannot be decoded here either)."""

    def __init__(self, db: Database, decode: Callable[[Row, bool, float], OutboxRecord]) -> None:
        self.db = db
        self.world = db.world
        self.decode = decode
        self.deadline: float | None = None

    # --- one statement ------------------------------------------------------------------

    def _round_trip(self) -> float:
        rng, faults = self.world.rng, self.db.faults
        if not self.db.quiet and faults.slow and rng.random() < faults.slow:
            return rng.uniform(0.05, 1.0)
        return rng.uniform(0.0002, 0.003)

    def _bound(self) -> float:
        left = 30.0
        if self.deadline is not None:
            left = min(
                left, max(PAST_DEADLINE_SECONDS, self.deadline + PAST_DEADLINE_SECONDS - self.world.now)
            )
        return left

    def _statement(self, what: str, effect: Callable[[], T], write: bool = False) -> T:
        """Run ``effect`` atomically between two half round trips, with the seed's faults."""
        world, rng, faults = self.world, self.world.rng, self.db.faults
        world.check()
        if self.deadline is not None and world.now >= self.deadline + PAST_DEADLINE_SECONDS:
            raise StoreUnavailable(f"{what}: the invocation's deadline has passed", False)
        noisy = not self.db.quiet
        if noisy and faults.drop and rng.random() < faults.drop:
            world.pause(rng.uniform(0.0, 0.01))
            raise StoreUnavailable(f"{what}: (2013) Lost connection to server during query", False)
        if noisy and faults.stall and rng.random() < faults.stall:
            world.pause(self._bound())
            if write and rng.random() < 0.5:
                effect()  # it ran; the answer never came
            raise StoreUnavailable(f"{what}: (2013) Lost connection (read timeout)")
        trip, bound = self._round_trip(), self._bound()
        if trip > bound:  # the socket timeout (MySQLOutboxStore._bound) cuts it off
            world.pause(bound / 2)
            if write and not self.db.read_only() and rng.random() < 0.5:
                effect()
            world.pause(bound / 2)
            raise StoreUnavailable(f"{what}: (2013) Lost connection (read timeout)")
        world.pause(trip / 2)
        if write and self.db.read_only():
            world.pause(trip / 2)
            raise StoreUnavailable(
                f"{what}: (1290) The MariaDB server is running with the --read-only option"
            )
        result = effect()
        world.pause(trip / 2)
        if noisy and write and faults.lost_ack and rng.random() < faults.lost_ack:
            raise StoreUnavailable(f"{what}: (2013) Lost connection to server during query (after COMMIT)")
        return result

    # --- shard leases -------------------------------------------------------------------

    def shard_ids(self) -> list[int]:
        return self._statement("list shards", lambda: sorted(self.db.leases))

    def acquire_shards(
        self, token: bytes, owner: str, lease_seconds: float, limit: int, exclude: Collection[int]
    ) -> list[int]:
        db = self.db
        free = self._statement(
            "acquire shards",
            lambda: [
                s for s, lease in sorted(db.leases.items()) if lease.until <= db.db_now() and s not in exclude
            ],
        )
        self.world.rng.shuffle(free)
        taken = 0
        for shard in free:
            if limit and taken >= limit:
                break
            if self.deadline is not None and self.world.now >= self.deadline:
                break

            def cas(shard: int = shard) -> int:
                lease = db.leases[shard]
                if lease.until > db.db_now():
                    return 0
                db.leases[shard] = Lease(token, owner, db.db_now() + lease_seconds)
                return 1

            taken += self._statement("acquire shards", cas, write=True)
        return self._statement(
            "acquire shards", lambda: sorted(s for s, lease in db.leases.items() if lease.token == token)
        )

    def release(self, token: bytes, shards: Sequence[int] | None, grace_seconds: float) -> None:
        if shards is not None and not shards:
            return
        db = self.db

        def effect() -> None:
            for shard, lease in db.leases.items():
                if lease.token == token and (shards is None or shard in shards):
                    db.leases[shard] = Lease(None, None, db.db_now() + grace_seconds)

        self._statement("release shards", effect, write=True)

    # --- reading ------------------------------------------------------------------------

    def _pending(self, shard: int, after: int = 0) -> Iterator[Row]:
        ids = self.db.pending[shard]
        for i in range(bisect.bisect_right(ids, after), len(ids)):
            yield self.db.rows[ids[i]]

    def read_heads(
        self,
        cursors: Mapping[int, int],
        limit: int,
        exclude: Mapping[int, Sequence[int]] | None = None,
        skip: Mapping[int, Collection[AggregateKey]] | None = None,
    ) -> list[OutboxRecord]:
        if not cursors:
            return []

        def effect() -> list[tuple[Row, bool, float]]:
            now = self.db.db_now()
            out: list[tuple[Row, bool, float]] = []
            for shard, after in cursors.items():
                left_out = set((exclude or {}).get(shard, ()))
                skipped = {_key_bytes(k) for k in (skip or {}).get(shard, ())}
                page = list(
                    itertools.islice(
                        (
                            r
                            for r in self._pending(shard, after)
                            if r.id not in left_out and r.key not in skipped
                        ),
                        limit,
                    )
                )
                out += [(r, r.available_at <= now, max(0.0, r.available_at - now)) for r in page]
            return out

        rows = self._statement("read pending rows", effect)
        # Decoded on the client, after the answer arrived (as PyMySQL does): a copy of the row.
        return [
            self.decode(r, due, wait) for r, due, wait in sorted(rows, key=lambda x: (x[0].shard, x[0].id))
        ]

    def load_bodies(self, ids: Sequence[int]) -> dict[int, tuple[bytes, str | None]]:
        if not ids:
            return {}

        def effect() -> list[Row]:
            return [r for i in ids if (r := self.db.rows.get(i)) is not None and r.status == "PENDING"]

        rows = self._statement("load large rows", effect)
        sizes = [len(r.payload) + len(r.headers or b"") for r in rows]
        limit = self.db.max_batch_bytes
        if limit is not None and len(sizes) > 1 and sum(sizes) > limit:
            # One row may be heavier than the budget (it goes alone); several together may not.
            self.db.memory_breaches.append(
                f"{len(sizes)} bodies of {sum(sizes)} bytes in one pass, budget {limit}"
            )
        return {r.id: (r.payload, None if r.headers is None else decode(r.headers)) for r in rows}

    def read_due_heads(
        self, shards: Sequence[int], limit: int, exclude: Mapping[int, Sequence[int]] | None = None
    ) -> list[OutboxRecord]:
        """As MySQLOutboxStore.read_due_heads: the heads (one statement), then the due ones' first
        rows (a second statement, a later snapshot)."""
        if not shards:
            return []
        in_flight = {i for ids in (exclude or {}).values() for i in ids}

        def heads() -> list[tuple[Row, bool, float]]:
            now = self.db.db_now()
            out: list[tuple[Row, bool, float]] = []
            for shard in shards:
                first = [self.db.rows[ids[0]] for ids in self.db.pending_by_key[shard].values()]
                ordered = sorted(
                    first,
                    key=lambda r: (
                        r.available_at > now,
                        r.available_at if r.available_at > now else 0.0,
                        r.id,
                    ),
                )
                out += [(r, r.available_at <= now, max(0.0, r.available_at - now)) for r in ordered[:limit]]
            return out

        found = self._statement("read due heads", heads)
        due = [r for r, ok, _ in found if ok and r.id not in in_flight]
        rows = [self.decode(r, ok, wait) for r, ok, wait in found if not ok]
        if due:
            per = -(-limit // len(due))

            def first_rows() -> list[tuple[Row, bool, float]]:
                now = self.db.db_now()
                out: list[tuple[Row, bool, float]] = []
                for head in due:
                    ids = self.db.pending_by_key[head.shard].get(head.key, [])
                    mine = (self.db.rows[i] for i in ids)
                    out += [
                        (r, r.available_at <= now, max(0.0, r.available_at - now))
                        for r in itertools.islice(mine, per)
                    ]
                return out

            rows += [
                self.decode(r, ok, wait) for r, ok, wait in self._statement("read due heads", first_rows)
            ]
        return sorted(rows, key=lambda r: (r.shard, r.id))

    def pending_stats(self) -> PendingStats:
        def effect() -> PendingStats:
            ids = [ids[0] for ids in self.db.pending.values() if ids]
            if not ids:
                return PendingStats(0, 0.0)
            first = self.db.rows[min(ids)]
            count = sum(len(ids) for ids in self.db.pending.values())
            return PendingStats(count, max(0.0, self.db.db_now() - first.created_at))

        return self._statement("read pending stats", effect)

    # --- the fenced finalize ------------------------------------------------------------

    def finalize(
        self, token: bytes, shards: Sequence[int], plan: FinalizePlan, lease_seconds: float
    ) -> FinalizeResult:
        if not shards:
            return FinalizeResult(0, 0, 0, frozenset())
        db = self.db

        def effect() -> FinalizeResult:
            now = db.db_now()
            kept = [s for s in shards if db.leases[s].token == token]
            lost = frozenset(shards) - frozenset(kept)
            if not kept:
                return FinalizeResult(0, 0, 0, lost)
            changed: list[Row] = []

            def target(record_id: int) -> Row | None:
                row = db.rows.get(record_id)
                ok = row is not None and row.committed and row.status == "PENDING" and row.shard in kept
                return row if ok else None

            published = retried = dead = 0
            for record_id in plan.published:
                if (row := target(record_id)) is not None:
                    db.settle(row, "PUBLISHED")
                    row.last_error = None
                    changed.append(row)
                    published += 1
            for d in plan.retries:
                if (row := target(d.record_id)) is not None and row.attempts == d.attempts:
                    row.attempts += 1 if d.charge_attempt else 0
                    row.available_at = now + d.delay_seconds
                    row.last_error = d.error[:1024]
                    changed.append(row)
                    retried += 1
            for record_id, reason in plan.dead:
                if (row := target(record_id)) is not None:
                    db.settle(row, "DEAD")
                    row.last_error = reason[:1024]
                    changed.append(row)
                    dead += 1
            for shard in kept:
                if db.leases[shard].token == token:
                    db.leases[shard].until = now + lease_seconds
            if db.on_finalize is not None:
                db.on_finalize(token, plan, changed)
            return FinalizeResult(published, retried, dead, lost)

        return self._statement("finalize", effect, write=True)


def _seen(row: Row, now: float) -> tuple[Row, bool, float]:
    """A row as a read returns it: due, or how long its backoff has left."""
    return (row, row.available_at <= now, max(0.0, row.available_at - now))


def _head_order(row: Row, now: float) -> tuple[bool, float, int]:
    """aggregate_heads' ORDER BY: due heads by id, then those backing off, soonest due first."""
    later = row.available_at > now
    return (later, row.available_at if later else 0.0, row.id)


def _key_bytes(key: AggregateKey) -> tuple[bytes, bytes]:
    """A key the relay passes back, as the bytes the real store sends (the bytes it read)."""
    return (raw(key[0]), raw(key[1]))
