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
from .bodies import weigh, with_bodies
from .config import RelaySettings
from .dead_letters import DeadLetterDispatch
from .messages import encode
from .model import (
    AggregateKey,
    DeadLetter,
    OutboxRecord,
    PendingStats,
    RetryDecision,
    SendResult,
    Summary,
)
from .pipeline import Batch, Finalizer
from .ports import (
    Clock,
    DeadLetterSink,
    InFlight,
    MetricName,
    Metrics,
    OutboxStore,
    Publisher,
    StoreUnavailable,
)
from .preview import preview
from .retry import RetryPolicy
from .rowtext import shown
from .shard_sweep import MAX_SKIPPED_KEYS, ShardSweep, advance, blocked_of, starved

log = logging.getLogger("outbox_relay")

# Time kept back from the deadline for the last finalize, the release and the lag query.
FINALIZE_RESERVE_SECONDS = 0.3
# A pass is not started with less time than this left: it could not finish.
MIN_PASS_SECONDS = 0.1
# While polling with shards in hand, look for more free shards this often.
ACQUIRE_EVERY_SECONDS = 1.0
# A row whose topic is missing or denied waits this long (no attempt charged) before it is tried
# again: a per-topic outage, not the row's fault.
TOPIC_WAIT_SECONDS = 30.0
# The last pass is sized to take at most this share of the time left (by the measured send rate).
PASS_TIME_SHARE = 0.5


@dataclass(slots=True)
class _Run:
    """The state of one run: its lease token, the shards it holds and its time limits."""

    token: bytes
    deadline: float
    work_deadline: float
    owned: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    counted: set[int] = field(default_factory=set)  # every shard leased in this run
    sweeps: dict[int, ShardSweep] = field(default_factory=dict)
    in_doubt: bool = False
    poll_until: float | None = None
    next_acquire: float = 0.0
    # A batch handed to the producer and not yet waited for: if the run fails now, it may land.
    unawaited: InFlight | None = None
    acquire_failed: bool = False
    # The run's passes so far (rows sent, seconds): the send rate that sizes its last pass.
    sent_rows: int = 0
    sent_seconds: float = 0.0
    # Aggregates whose next row the last pass left for its weight: they go first in the next one,
    # so a row heavier than what other shards leave of the budget is not put off for ever.
    first: set[AggregateKey] = field(default_factory=set)


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
        dead_letters: DeadLetterSink | DeadLetterDispatch,
        metrics: Metrics,
        clock: Clock,
        settings: RelaySettings,
        owner: str = "relay",
        rng: random.Random | None = None,
        finalize_store: OutboxStore | None = None,
    ) -> None:
        self.store = store
        # A second connection for the finalize, so it runs beside the next batch (optional).
        self.finalize_store = finalize_store
        self.publisher = publisher
        # A dispatch kept by the caller across runs carries a queue outage's pause across them.
        self.dead_letters = (
            dead_letters if isinstance(dead_letters, DeadLetterDispatch) else DeadLetterDispatch(dead_letters)
        )
        self.metrics = metrics
        self.clock = clock
        self.settings = settings
        self.owner = owner[:128]
        self.rng = rng or random.Random()
        self.policy = RetryPolicy(
            settings.backoff_base_seconds, settings.backoff_max_seconds, settings.max_attempts
        )
        self._encode = partial(encode, settings=settings)
        self._weigh = weigh(settings.max_message_bytes)
        self._topic_wait = max(
            settings.backoff_base_seconds, min(settings.backoff_max_seconds, TOPIC_WAIT_SECONDS)
        )

    # --- the run ------------------------------------------------------------------------

    def run(self, deadline: float) -> Summary:
        started = self.clock.monotonic()
        summary = Summary(dry_run=self.settings.dry_run)
        stats: PendingStats | None = None  # None: the lag is unknown (the database did not answer)
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
        self._emit(summary, self.clock.monotonic() - started, stats)
        return summary

    def _lease_seconds(self, deadline: float) -> float:
        # The lease outlives the invocation: when it expires the holder is gone, not paused, and
        # what it had on the wire has landed (a killed run releases nothing).
        return max(0.0, deadline - self.clock.monotonic()) + self._margin()

    def _grace(self, run: _Run) -> float:
        """How long shards given back stay unclaimable: while records sent from them may still
        land (the run is in doubt), none of their rows may be sent again by another run."""
        return self._margin() if run.in_doubt else 0.0

    def _margin(self) -> float:
        """How long after a run others stay away from its shards: the configured margin, and at
        least as long as the publisher says a record given up on may still be appended."""
        doubt = float(getattr(self.publisher, "doubt_seconds", 0.0))
        return max(self.settings.lease_margin_seconds, doubt)

    def _relay(self, summary: Summary, deadline: float) -> None:
        """Lease free shards (up to ``max_shards_per_run`` at a time) and drain them pass by pass.
        Then either keep polling them (the poll window) or give them back and take the next
        free ones (each shard once per round of the outbox).

        Passes are pipelined: while batch N is finalized in the database (on the finalize
        store's own connection), batch N+1 is read and handed to Kafka."""
        run = _Run(
            token=uuid.UUID(int=self.rng.getrandbits(128), version=4).bytes,
            deadline=deadline,
            work_deadline=deadline - FINALIZE_RESERVE_SECONDS,
        )
        if self.settings.poll_window_seconds > 0:
            run.poll_until = min(
                self.clock.monotonic() + self.settings.poll_window_seconds, run.work_deadline
            )
        finalizer = Finalizer(self.store, self.finalize_store)
        self.publisher.new_run()
        previous: Batch | None = None  # the batch being finalized: its rows are still PENDING
        try:
            while True:
                now = self.clock.monotonic()
                for shard in run.owned:
                    run.sweeps[shard].expire(now)
                active = sorted(s for s in run.owned if not run.sweeps[s].idle)
                if not active:
                    self._join(finalizer, run, summary)
                    previous = None
                    if self._refill(run, summary):
                        continue
                    summary.stopped_by = "drained"
                    break
                budget = self._event_budget(summary, previous)
                if budget == 0:
                    summary.stopped_by = "max_events"
                    break
                started = self.clock.monotonic()
                if started + MIN_PASS_SECONDS >= run.work_deadline:
                    summary.stopped_by = "deadline"
                    break
                batch, selection = self._read(active, run, budget, previous)
                run.unawaited = self.publisher.send([m for _, m in selection.sendable], run.work_deadline)
                just_finalized = self._join(finalizer, run, summary)
                results = run.unawaited.wait(run.work_deadline)
                run.unawaited = None
                if selection.sendable:
                    self._measure(run, started, len(selection.sendable))
                step = self._settle(selection, results, run)
                summary.topic_unavailable += step.topic_waits
                # A shard with rows in flight is read again once they are finalized: only then
                # can it tell what is left.
                progress = set(step.in_flight) | just_finalized | selection.deferred
                advance(batch, run.sweeps, progress)
                if selection.sendable or selection.invalid:
                    summary.passes += 1  # a poll that found nothing is not a pass
                run.in_doubt = run.in_doubt or self.publisher.in_doubt
                finalizer.start(run.token, run.owned, step, self._lease_seconds(run.deadline))
                previous = step
                # Drop this pass's rows and messages before the next read: memory holds one
                # pass's bodies at a time, not two (the finalize needs only the ids).
                del batch, selection, results
                if step.unavailable is not None:
                    summary.error = f"kafka unavailable: {step.unavailable}"
                    summary.stopped_by = "kafka_unavailable"
                    break
        finally:
            try:
                if run.unawaited is not None:
                    # The run failed with a batch on the wire (a finalize or read error): wait for
                    # it within the deadline, so what may still land is known before releasing.
                    try:
                        run.unawaited.wait(run.work_deadline)
                    finally:
                        run.in_doubt = True
                self._join(finalizer, run, summary)
            finally:
                finalizer.close()
                # However the run ends (send itself may have raised): what may still land fences.
                run.in_doubt = run.in_doubt or self.publisher.in_doubt
                self._release(run)
                summary.blocked = blocked_of(run.sweeps.values())

    def _release(self, run: _Run) -> None:
        if not run.owned and not run.acquire_failed:
            return
        # After a timed-out flush or a failed run, sends may still land: keep others out for the
        # margin.  An acquire whose outcome is unknown releases whatever the token holds.
        try:
            self.store.release(run.token, None if run.acquire_failed else run.owned, self._grace(run))
        except StoreUnavailable:
            log.warning("could not release shards; their leases expire on their own")

    def _measure(self, run: _Run, started: float, rows: int) -> None:
        """How long a row takes to read, send and settle: sizes the last pass of the run."""
        run.sent_rows += rows
        run.sent_seconds += max(0.0, self.clock.monotonic() - started)

    def _join(self, finalizer: Finalizer, run: _Run, summary: Summary) -> set[int]:
        """Wait for the batch being finalized and account for it; shards found taken over are
        dropped.  Returns the shards that batch had rows in."""
        joined = finalizer.join()
        if joined is None:
            return set()
        step, result = joined
        if result is not None:
            # Committed: the rows marked DEAD no longer need the dispatch to remember their letters.
            self.dead_letters.forget([record_id for record_id, _ in step.plan.dead])
            summary.published += result.published
            summary.retried += result.retried
            summary.dead_lettered += result.dead
            if result.lost_shards:
                summary.lease_lost += len(result.lost_shards)
                log.warning("lease lost", extra={"shards": sorted(result.lost_shards)})
                run.owned = [s for s in run.owned if s not in result.lost_shards]
                run.done.update(result.lost_shards)
        return set(step.in_flight)

    def _refill(self, run: _Run, summary: Summary) -> bool:
        """Find more work once every owned shard is idle; False when the run is done."""
        now = self.clock.monotonic()
        limit = self.settings.max_shards_per_run
        if run.poll_until is not None and now < run.poll_until:
            # Poll window: keep the shards, look for free ones now and then, re-read after a nap.
            if limit and len(run.owned) >= limit and not run.in_doubt:
                # At the shard limit with every shard idle: go round the outbox (the shards not
                # polled this round, at once), or these would be polled until the deadline while
                # others have a backlog.  A round done, the next starts after the nap (one
                # release and two acquires per nap when other runs hold the rest).  Not while
                # in doubt: shards given back then are fenced for the grace.
                self._give_back(run)
                if self._acquire(run, summary, limit, run.done):
                    return True
                run.done.clear()
                self._acquire(run, summary, limit, set())
            if now >= run.next_acquire and not (limit and len(run.owned) >= limit):
                more = self._acquire(run, summary, limit - len(run.owned) if limit else 0, set(run.owned))
                run.next_acquire = now + (
                    ACQUIRE_EVERY_SECONDS if run.owned else self.settings.poll_interval_seconds
                )
                if more:
                    return True
            self.clock.sleep(min(self.settings.poll_interval_seconds, run.poll_until - now))
            run.sweeps = {shard: ShardSweep() for shard in run.owned}
            return True
        self._give_back(run)
        return bool(self._acquire(run, summary, limit, run.done))

    def _give_back(self, run: _Run) -> None:
        """Release the shards held (with the grace, in doubt); they count as done this round."""
        if run.owned:
            self.store.release(run.token, run.owned, self._grace(run))
            run.done.update(run.owned)
            run.owned = []

    def _acquire(self, run: _Run, summary: Summary, limit: int, exclude: set[int]) -> list[int]:
        """Lease more shards; returns the new ones.  ``run.owned`` stays the exact list the token
        holds (the store answers with all of them, not only the new ones)."""
        try:
            held = self.store.acquire_shards(
                run.token, self.owner, self._lease_seconds(run.deadline), limit, exclude
            )
        except StoreUnavailable as exc:
            run.acquire_failed = exc.reached  # some may have been taken before the failure
            raise
        more = sorted(set(held) - set(run.owned))
        run.owned = sorted(set(run.owned) | set(held))
        run.sweeps.update({shard: ShardSweep() for shard in more})
        summary.shards += len(set(more) - run.counted)  # distinct shards, however often leased
        run.counted.update(more)
        if more:
            log.info("shards leased", extra={"shards": more, "owner": self.owner})
        return more

    def _event_budget(self, summary: Summary, previous: Batch | None) -> int | None:
        if self.settings.max_events is None:
            return None
        not_final = len(previous.plan.published) if previous is not None else 0
        return max(0, self.settings.max_events - summary.published - not_final)

    def _read(
        self, active: list[int], run: _Run, budget: int | None, previous: Batch | None
    ) -> tuple[dict[int, list[OutboxRecord]], ordering.Selection]:
        """Read each active shard's head, leaving out its blocked aggregates, and apply the
        head-of-line rule to it.  A shard whose page in id order holds nothing to send is read
        again by its aggregates' due heads, in the same pass (and so on for the run)."""
        sweeps = run.sweeps
        in_flight = previous.in_flight if previous is not None else {}
        unsettled = previous.unsettled if previous is not None else {}
        blocked: set[AggregateKey] = set()
        skip: dict[int, list[AggregateKey]] = {}
        for shard in active:
            keys = set(sweeps[shard].blocked) | unsettled.get(shard, set())
            blocked |= keys
            skip[shard] = sorted(keys)[:MAX_SKIPPED_KEYS]
        page = self._page(len(active))
        in_order = [s for s in active if not sweeps[s].by_heads]
        records = self.store.read_heads(dict.fromkeys(in_order, 0), page, in_flight, skip) if in_order else []
        stuck = starved(records, in_order, page, blocked)
        for shard in stuck:
            sweeps[shard].by_heads = True
        by_heads = [s for s in active if sweeps[s].by_heads]
        if by_heads:
            records = [r for r in records if r.shard not in stuck]
            records += self.store.read_due_heads(by_heads, page, in_flight)
        now = self.clock.monotonic()
        batch: dict[int, list[OutboxRecord]] = {s: [] for s in active}
        for record in records:
            batch[record.shard].append(record)
            if not record.due and record.key not in blocked:
                reason = f"backing off after attempt {record.attempts}"
                sweeps[record.shard].block(record.key, reason, now + record.wait_seconds, record.id)
        cap = self.settings.batch_size if budget is None else min(budget, self.settings.batch_size)
        limit, size = self._fit(run, cap), self.settings.max_batch_bytes
        if run.first:  # stable: each aggregate keeps its id order
            records.sort(key=lambda r: r.key not in run.first)
        records = with_bodies(self.store, records, blocked, limit, size, self.settings.max_message_bytes)
        selection = ordering.select(records, blocked, self._encode, limit, size, self._weigh)
        run.first = selection.heavy
        return batch, selection

    def _fit(self, run: _Run, cap: int) -> int:
        """Rows this pass may send: the batch, or fewer when the time left would not carry it."""
        if not run.sent_rows or run.sent_seconds <= 0:
            return cap
        per_row = run.sent_seconds / run.sent_rows  # over the whole run: one slow pass is diluted
        left = run.work_deadline - self.clock.monotonic()
        return max(1, min(cap, int(left * PASS_TIME_SHARE / per_row)))

    def _page(self, shards: int) -> int:
        """Rows read per shard in a pass: the batch shared by the shards being read."""
        return max(1, math.ceil(self.settings.batch_size / shards))

    def _settle(self, selection: ordering.Selection, results: list[SendResult], run: _Run) -> Batch:
        """Turn Kafka's answers into the batch's finalize plan (dead letters sent first)."""
        step = Batch()
        sent = [record for record, _ in selection.sendable]
        topic = {record.id: message.topic for record, message in selection.sendable}  # as sent
        settled = ordering.settle(list(zip(sent, results, strict=True)))
        step.unavailable = settled.unavailable
        step.plan.published = [r.id for r in settled.published]

        letters: list[DeadLetter] = [DeadLetter(r, reason, None) for r, reason in selection.invalid]
        letters += [DeadLetter(r, reason, topic[r.id]) for r, reason in settled.rejected]
        for record, error in settled.retry:
            attempts = record.attempts + 1
            if self.policy.exhausted(attempts):
                reason = f"gave up after {attempts} attempts: {error}"
                letters.append(DeadLetter(record, reason, topic[record.id]))
            else:
                delay = self.policy.next_delay(attempts, self.rng)
                self._back_off(step, run, record, delay, error, charge=True)
        for record, error in settled.waiting:
            wait = max(
                self.settings.backoff_base_seconds, min(self.settings.backoff_max_seconds, TOPIC_WAIT_SECONDS)
            )
            self._back_off(step, run, record, wait, error, charge=False)
            step.topic_waits += 1
        if letters and self.clock.monotonic() < run.work_deadline:
            self._dead_letter(letters, step, run)

        published = set(step.plan.published)
        for record in sent + [r for r, _ in selection.invalid]:
            step.in_flight.setdefault(record.shard, []).append(record.id)
            if record.id not in published:
                step.unsettled.setdefault(record.shard, set()).add(record.key)
        return step

    def _back_off(
        self, step: Batch, run: _Run, record: OutboxRecord, delay: float, error: str, charge: bool
    ) -> None:
        step.plan.retries.append(RetryDecision(record.id, delay, error, charge, record.attempts))
        sweep = run.sweeps.get(record.shard)
        if sweep is not None:
            sweep.block(record.key, error, self.clock.monotonic() + delay, record.id)

    def _dead_letter(self, letters: list[DeadLetter], step: Batch, run: _Run) -> None:
        """Send to the DLQ first; only what it acknowledged becomes DEAD.  The rest backs off
        without an attempt charged: a dead-letter outage is not the row's fault."""
        acks = self.dead_letters.send(letters, self.clock, run.work_deadline)
        for letter, error in zip(letters, acks, strict=True):
            if error is None:
                step.plan.dead.append((letter.record.id, letter.reason[:1024]))
                log.warning(
                    "dead-lettered",
                    extra={
                        "outbox_id": letter.record.id,
                        "event_id": shown(letter.record.event_id),
                        "reason": letter.reason,
                    },
                )
            else:
                # At least the base delay: a queue that just failed is not tried again at once.
                jittered = self.policy.next_delay(letter.record.attempts, self.rng)
                delay = max(self.settings.backoff_base_seconds, jittered)
                self._back_off(step, run, letter.record, delay, f"dead-letter queue: {error}", charge=False)

    # --- dry run ------------------------------------------------------------------------

    def preview(self, limit: int) -> list[tuple[OutboxRecord, str]]:
        """What the next run would do first, row by row (see :func:`preview.preview`)."""
        return preview(self.store, self._encode, limit, self.settings)

    def _dry_run(self, summary: Summary) -> None:
        rows = self.preview(self.settings.max_events or self.settings.batch_size)
        summary.would_publish = sum(1 for _, verdict in rows if verdict.startswith("publish"))
        summary.stopped_by = "dry_run"
        for record, verdict in rows:
            if verdict.startswith("dead-letter"):
                log.info("dry run: would dead-letter", extra={"outbox_id": record.id, "reason": verdict})

    # --- metrics ------------------------------------------------------------------------

    def _emit(self, summary: Summary, seconds: float, stats: PendingStats | None) -> None:
        """The run's metrics.  The lag gauges only when measured: a 0 standing for "unknown" would
        clear the lag alarm during a database outage (no data is what the alarm treats as breaching).
        A dry run is no relay run: it reports the lag it measured and nothing else (the handler
        counts it as an operator action), so it cannot stand in for a successful run."""
        m = self.metrics
        if stats is not None:
            m.gauge(MetricName.PENDING_COUNT, stats.pending, "Count")
            m.gauge(MetricName.OLDEST_PENDING_AGE_SECONDS, stats.oldest_pending_age_seconds, "Seconds")
        if summary.dry_run:
            return
        m.count(MetricName.PUBLISHED, summary.published)
        m.count(MetricName.RETRIED, summary.retried)
        m.count(MetricName.DEAD_LETTERED, summary.dead_lettered)
        m.count(MetricName.LEASE_LOST, summary.lease_lost)
        m.count(MetricName.TOPIC_UNAVAILABLE, summary.topic_unavailable)
        m.count(MetricName.RUN_FAILED if summary.error else MetricName.RUN_SUCCEEDED, 1)
        m.gauge(MetricName.RUN_DURATION_MS, seconds * 1000.0, "Milliseconds")
