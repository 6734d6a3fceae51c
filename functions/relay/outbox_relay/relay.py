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


@dataclass(slots=True)
class _ShardSweep:
    """Where the next read of a shard starts.  ``cursor`` > 0 only while skipping a blocked head."""

    cursor: int = 0
    skipped_pages: int = 0
    idle: bool = False


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
            summary.error = summary.error or f"database unavailable: {exc}"
            summary.stopped_by = "database_unavailable"
        self._emit(summary, self.clock.monotonic() - started)
        return summary

    def _lease_seconds(self, deadline: float) -> float:
        # The lease outlives the invocation: when it expires the holder is gone, not paused.
        return max(0.0, deadline - self.clock.monotonic()) + self.settings.lease_margin_seconds

    def _relay(self, summary: Summary, deadline: float) -> None:
        """Lease free shards (up to ``max_shards_per_run`` at a time), drain them pass by pass,
        then give them back and take the next free ones, each shard at most once per run."""
        work_deadline = deadline - FINALIZE_RESERVE_SECONDS
        token = uuid.uuid4().bytes
        owned: list[int] = []
        done: set[int] = set()
        sweeps: dict[int, _ShardSweep] = {}
        in_doubt = False
        try:
            while True:
                active = sorted(s for s in owned if not sweeps[s].idle)
                if not active:
                    if owned:
                        self.store.release(token, owned, 0.0)
                        done.update(owned)
                    owned = self.store.acquire_shards(
                        token,
                        self.owner,
                        self._lease_seconds(deadline),
                        self.settings.max_shards_per_run,
                        done,
                    )
                    sweeps = {shard: _ShardSweep() for shard in owned}
                    summary.shards += len(owned)
                    active = list(owned)
                    if owned:
                        log.info("shards leased", extra={"shards": owned, "owner": self.owner})
                if not active:
                    summary.stopped_by = "drained"
                    break
                budget = self._event_budget(summary)
                if budget == 0:
                    summary.stopped_by = "max_events"
                    break
                if self.clock.monotonic() + MIN_PASS_SECONDS >= work_deadline:
                    summary.stopped_by = "deadline"
                    break
                step = self._pass(active, sweeps, budget, work_deadline, deadline)
                summary.passes += 1
                in_doubt = in_doubt or self.publisher.in_doubt
                lost: frozenset[int] = frozenset()
                if step.plan:
                    result = self.store.finalize(token, owned, step.plan, self._lease_seconds(deadline))
                    summary.published += result.published
                    summary.retried += result.retried
                    summary.dead_lettered += result.dead
                    lost = result.lost_shards
                if lost:
                    summary.lease_lost += len(lost)
                    log.warning("lease lost", extra={"shards": sorted(lost)})
                    owned = [s for s in owned if s not in lost]
                    done.update(lost)
                if step.unavailable is not None:
                    summary.error = f"kafka unavailable: {step.unavailable}"
                    summary.stopped_by = "kafka_unavailable"
                    break
        finally:
            if owned:
                # After a timed-out flush, sends may still land: keep others out for the margin.
                grace = self.settings.lease_margin_seconds if in_doubt else 0.0
                try:
                    self.store.release(token, owned, grace)
                except StoreUnavailable:
                    log.warning("could not release shards; their leases expire on their own")

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

    def _dry_run(self, summary: Summary) -> None:
        """Read (without leasing or writing) what the next run would publish first."""
        shards = self.store.shard_ids()
        limit = max(1, math.ceil(self.settings.batch_size / max(1, len(shards))))
        records = self.store.read_heads(dict.fromkeys(shards, 0), limit)
        cap = self.settings.max_events
        selection = ordering.select(records, set(), self._encode, cap)
        summary.would_publish = len(selection.sendable)
        summary.dead_lettered = 0
        summary.stopped_by = "dry_run"
        for record, reason in selection.invalid:
            log.info("dry run: would dead-letter", extra={"outbox_id": record.id, "reason": reason})

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
