"""The relay core: lease shards, publish their pending heads in order, finalize under the fence.

It knows nothing of Lambda, boto3 or SQL: it drives an :class:`OutboxStore`, a
:class:`Publisher`, a :class:`DeadLetterSink`, :class:`Metrics` and a :class:`Clock`.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from dataclasses import dataclass, field
from functools import partial

from . import ordering
from .config import RelaySettings
from .messages import encode
from .model import (
    AggregateKey,
    DeadLetter,
    FinalizePlan,
    OutboxRecord,
    RetryDecision,
    Summary,
)
from .ports import Clock, DeadLetterSink, Metrics, OutboxStore, Publisher, StoreUnavailable
from .retry import RetryPolicy

log = logging.getLogger("outbox_relay")

# Time kept back from the deadline for the last finalize, the release and the lag query.
FINALIZE_RESERVE_SECONDS = 0.3
# A pass is not started with less time than this left: it could not finish.
MIN_PASS_SECONDS = 0.1
# How many pages past a fully blocked head one shard may be scanned in a run.
MAX_SKIP_PAGES = 50
# While polling with shards in hand, look for more free shards this often.
ACQUIRE_EVERY_SECONDS = 1.0


@dataclass(slots=True)
class _ShardSweep:
    """Where the next read of a shard starts.  ``cursor`` > 0 only while skipping a blocked head."""

    cursor: int = 0
    skipped_pages: int = 0
    idle: bool = False


@dataclass(slots=True)
class _Run:
    """The state of one run: its lease token, the shards it holds, and its time limits."""

    token: bytes
    deadline: float
    work_deadline: float
    owned: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    sweeps: dict[int, _ShardSweep] = field(default_factory=dict)
    in_doubt: bool = False
    poll_until: float | None = None
    next_acquire: float = 0.0


@dataclass(slots=True)
class _Pass:
    plan: FinalizePlan = field(default_factory=FinalizePlan)
    progress: set[int] = field(default_factory=set)
    unavailable: str | None = None


class Relay:
    """One relay run over the outbox: ``run(deadline)`` returns a :class:`Summary`.

    Blocks until the owned shards are drained, ``max_events`` were published, Kafka or the
    database became unavailable, or the monotonic ``deadline`` is near.  It never returns with
    records in flight it has not accounted for: what it did not finish, it releases.
    """

    def __init__(
        self,
        store: OutboxStore,
        publisher: Publisher,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        clock: Clock,
        settings: RelaySettings,
        owner: str = "relay",
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.clock = clock
        self.settings = settings
        self.owner = owner[:128]
        self.rng = rng or random.Random()
        self.policy = RetryPolicy(
            settings.backoff_base_seconds, settings.backoff_max_seconds, settings.max_attempts
        )
        self._encode = partial(encode, settings=settings)

    # --- the run ------------------------------------------------------------------------

    def run(self, deadline: float) -> Summary:
        started = self.clock.monotonic()
        summary = Summary(dry_run=self.settings.dry_run)
        try:
            if self.settings.dry_run:
                self._dry_run(summary)
            else:
                self._relay(summary, deadline)
            stats = self.store.pending_stats()
            summary.pending = stats.pending
            summary.oldest_pending_age_seconds = stats.oldest_pending_age_seconds
        except StoreUnavailable as exc:
            summary.error = summary.error or f"database error: {exc}"
            summary.stopped_by = "database_unavailable"
        self._emit(summary, self.clock.monotonic() - started)
        return summary

    def _lease_seconds(self, deadline: float) -> float:
        # The lease outlives the invocation: when it expires the holder is gone, not paused.
        return max(0.0, deadline - self.clock.monotonic()) + self.settings.lease_margin_seconds

    def _relay(self, summary: Summary, deadline: float) -> None:
        """Lease free shards (up to ``max_shards_per_run`` at a time) and drain them pass by pass.
        Then either keep polling them (the poll window) or give them back and take the next
        free ones, each shard at most once per run."""
        run = _Run(
            token=uuid.uuid4().bytes, deadline=deadline, work_deadline=deadline - FINALIZE_RESERVE_SECONDS
        )
        if self.settings.poll_window_seconds > 0:
            run.poll_until = min(
                self.clock.monotonic() + self.settings.poll_window_seconds, run.work_deadline
            )
        try:
            while True:
                active = sorted(s for s in run.owned if not run.sweeps[s].idle)
                if not active:
                    if self._refill(run, summary):
                        continue
                    summary.stopped_by = "drained"
                    break
                budget = self._event_budget(summary)
                if budget == 0:
                    summary.stopped_by = "max_events"
                    break
                if self.clock.monotonic() + MIN_PASS_SECONDS >= run.work_deadline:
                    summary.stopped_by = "deadline"
                    break
                step = self._pass(active, run.sweeps, budget, run.work_deadline, deadline)
                summary.passes += 1
                run.in_doubt = run.in_doubt or self.publisher.in_doubt
                lost: frozenset[int] = frozenset()
                if step.plan:
                    result = self.store.finalize(
                        run.token, run.owned, step.plan, self._lease_seconds(deadline)
                    )
                    summary.published += result.published
                    summary.retried += result.retried
                    summary.dead_lettered += result.dead
                    lost = result.lost_shards
                if lost:
                    summary.lease_lost += len(lost)
                    log.warning("lease lost", extra={"shards": sorted(lost)})
                    run.owned = [s for s in run.owned if s not in lost]
                    run.done.update(lost)
                if step.unavailable is not None:
                    summary.error = f"kafka unavailable: {step.unavailable}"
                    summary.stopped_by = "kafka_unavailable"
                    break
        finally:
            if run.owned:
                # After a timed-out flush, sends may still land: keep others out for the margin.
                grace = self.settings.lease_margin_seconds if run.in_doubt else 0.0
                try:
                    self.store.release(run.token, run.owned, grace)
                except StoreUnavailable:
                    log.warning("could not release shards; their leases expire on their own")

    def _refill(self, run: _Run, summary: Summary) -> bool:
        """Find more work once every owned shard is idle; False when the run is done."""
        now = self.clock.monotonic()
        limit = self.settings.max_shards_per_run
        if run.poll_until is not None and now < run.poll_until:
            # Poll window: keep the shards, look for free ones now and then, re-read after a nap.
            if now >= run.next_acquire and not (limit and len(run.owned) >= limit):
                more = self._acquire(run, summary, limit - len(run.owned) if limit else 0, set(run.owned))
                run.next_acquire = now + (
                    ACQUIRE_EVERY_SECONDS if run.owned else self.settings.poll_interval_seconds
                )
                if more:
                    return True
            self.clock.sleep(min(self.settings.poll_interval_seconds, run.poll_until - now))
            run.sweeps = {shard: _ShardSweep() for shard in run.owned}
            return True
        if run.owned:
            self.store.release(run.token, run.owned, 0.0)
            run.done.update(run.owned)
            run.owned = []
        return bool(self._acquire(run, summary, limit, run.done))

    def _acquire(self, run: _Run, summary: Summary, limit: int, exclude: set[int]) -> list[int]:
        more = self.store.acquire_shards(
            run.token, self.owner, self._lease_seconds(run.deadline), limit, exclude
        )
        run.owned += more
        run.sweeps.update({shard: _ShardSweep() for shard in more})
        summary.shards += len(more)
        if more:
            log.info("shards leased", extra={"shards": more, "owner": self.owner})
        return more

    def _event_budget(self, summary: Summary) -> int | None:
        if self.settings.max_events is None:
            return None
        return max(0, self.settings.max_events - summary.published)

    def _pass(
        self,
        active: list[int],
        sweeps: dict[int, _ShardSweep],
        budget: int | None,
        work_deadline: float,
        deadline: float,
    ) -> _Pass:
        """Read each active shard's head, send what the ordering rules allow, settle the results."""
        limit = max(1, math.ceil(self.settings.batch_size / len(active)))
        records = self.store.read_heads({s: sweeps[s].cursor for s in active}, limit)
        by_shard: dict[int, list[OutboxRecord]] = {s: [] for s in active}
        for record in records:
            by_shard[record.shard].append(record)
        blocked: set[AggregateKey] = set()
        for shard in active:
            if sweeps[shard].cursor:
                blocked |= self.store.pending_keys_up_to(shard, sweeps[shard].cursor)
        cap = None if budget is None else min(budget, self.settings.batch_size)
        selection = ordering.select(records, blocked, self._encode, cap)

        step = _Pass()
        sent = [record for record, _ in selection.sendable]
        results = self.publisher.publish([m for _, m in selection.sendable], work_deadline)
        settled = ordering.settle(list(zip(sent, results, strict=True)))
        step.unavailable = settled.unavailable
        step.plan.published = [r.id for r in settled.published]

        letters: list[DeadLetter] = [DeadLetter(r, reason, None) for r, reason in selection.invalid]
        letters += [DeadLetter(r, reason, self._topic(r)) for r, reason in settled.rejected]
        for record, error in settled.retry:
            attempts = record.attempts + 1
            if self.policy.exhausted(attempts):
                reason = f"gave up after {attempts} attempts: {error}"
                letters.append(DeadLetter(record, reason, self._topic(record)))
            else:
                delay = self.policy.next_delay(attempts, self.rng)
                step.plan.retries.append(RetryDecision(record.id, delay, error, charge_attempt=True))
        if letters and self.clock.monotonic() < deadline:
            self._dead_letter(letters, step)

        touched = set(step.plan.published) | {d.record_id for d in step.plan.retries}
        touched |= {record_id for record_id, _ in step.plan.dead}
        step.progress = {r.shard for r in records if r.id in touched}
        self._advance(by_shard, sweeps, limit, step.progress)
        return step

    def _dead_letter(self, letters: list[DeadLetter], step: _Pass) -> None:
        """Send to the DLQ first; only what it acknowledged becomes DEAD.  The rest backs off."""
        acks = self.dead_letters.send(letters)
        for letter, error in zip(letters, acks, strict=True):
            if error is None:
                step.plan.dead.append((letter.record.id, letter.reason[:1024]))
                log.warning(
                    "dead-lettered",
                    extra={
                        "outbox_id": letter.record.id,
                        "event_id": letter.record.event_id,
                        "reason": letter.reason,
                    },
                )
            else:
                delay = self.policy.next_delay(letter.record.attempts, self.rng)
                step.plan.retries.append(
                    RetryDecision(
                        letter.record.id, delay, f"dead-letter queue: {error}", charge_attempt=False
                    )
                )

    def _topic(self, record: OutboxRecord) -> str | None:
        try:
            return self._encode(record).topic
        except ValueError:
            return None

    @staticmethod
    def _advance(
        by_shard: dict[int, list[OutboxRecord]],
        sweeps: dict[int, _ShardSweep],
        limit: int,
        progress: set[int],
    ) -> None:
        """Where each shard's next read starts (see README, "Reading a shard")."""
        for shard, rows in by_shard.items():
            sweep = sweeps[shard]
            if shard in progress:
                continue  # re-read from the same place: what was finalized is gone
            if len(rows) < limit or sweep.skipped_pages >= MAX_SKIP_PAGES:
                sweep.idle = True  # everything left is blocked until a later run
                continue
            sweep.cursor = rows[-1].id  # a full page, all blocked: look past it
            sweep.skipped_pages += 1

    # --- dry run ------------------------------------------------------------------------

    def preview(self, limit: int) -> list[tuple[OutboxRecord, str]]:
        """What the next run would do first, row by row, without leasing, writing or sending:
        ``publish to <topic>``, ``dead-letter: <reason>`` or why the row waits."""
        records = self.store.read_heads(dict.fromkeys(self.store.shard_ids(), 0), limit)
        records.sort(key=lambda r: r.id)
        records = records[:limit]
        selection = ordering.select(records, set(), self._encode)
        verdicts = {r.id: f"publish to {m.topic}" for r, m in selection.sendable}
        verdicts |= {r.id: f"dead-letter: {reason}" for r, reason in selection.invalid}
        out: list[tuple[OutboxRecord, str]] = []
        for record in records:
            if record.id in verdicts:
                out.append((record, verdicts[record.id]))
            elif not record.due:
                out.append((record, f"backing off (attempt {record.attempts})"))
            else:
                out.append((record, "waits behind an earlier event of its aggregate"))
        return out

    def _dry_run(self, summary: Summary) -> None:
        preview = self.preview(self.settings.max_events or self.settings.batch_size)
        summary.would_publish = sum(1 for _, verdict in preview if verdict.startswith("publish"))
        summary.stopped_by = "dry_run"
        for record, verdict in preview:
            if verdict.startswith("dead-letter"):
                log.info("dry run: would dead-letter", extra={"outbox_id": record.id, "reason": verdict})

    # --- metrics ------------------------------------------------------------------------

    def _emit(self, summary: Summary, seconds: float) -> None:
        m = self.metrics
        m.count("Published", summary.published)
        m.count("Retried", summary.retried)
        m.count("DeadLettered", summary.dead_lettered)
        m.count("LeaseLost", summary.lease_lost)
        m.count("RunFailed" if summary.error else "RunSucceeded", 1)
        m.gauge("PendingCount", summary.pending, "Count")
        m.gauge("OldestPendingAgeSeconds", summary.oldest_pending_age_seconds, "Seconds")
        m.gauge("RunDurationMs", seconds * 1000.0, "Milliseconds")
