"""The relay core: lease shards, publish their pending heads in order, finalize under the fence.

It knows nothing of Lambda, boto3 or SQL: it drives an :class:`OutboxStore`, a
:class:`Publisher`, a :class:`DeadLetterSink`, :class:`Metrics` and a :class:`Clock`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from . import ordering
from .config import RelaySettings
from .messages import encode
from .model import (
    AggregateKey,
    DeadLetter,
    FinalizePlan,
    FinalizeResult,
    OutboxRecord,
    PendingStats,
    RetryDecision,
    SendResult,
    Summary,
)
from .ports import Clock, DeadLetterSink, MetricName, Metrics, OutboxStore, Publisher, StoreUnavailable
from .retry import RetryPolicy

log = logging.getLogger("outbox_relay")
T = TypeVar("T")

# Time kept back from the deadline for the last finalize, the release and the lag query.
FINALIZE_RESERVE_SECONDS = 0.3
# A pass is not started with less time than this left: it could not finish.
MIN_PASS_SECONDS = 0.1
# How many pages past a fully blocked head one shard may be scanned in a run.
MAX_SKIP_PAGES = 50
# While polling with shards in hand, look for more free shards this often.
ACQUIRE_EVERY_SECONDS = 1.0
# After a dead-letter send failed as a whole (no answer by the deadline, or every letter refused),
# the run sends none for this long: a stalled queue costs a run one bounded wait, not one per pass.
DEAD_LETTER_PAUSE_SECONDS = 60.0


@dataclass(slots=True)
class _ShardSweep:
    """Where the next read of a shard starts.  ``cursor`` > 0 only while skipping a blocked head."""

    cursor: int = 0
    skipped_pages: int = 0
    idle: bool = False


@dataclass(slots=True)
class _Run:
    """The state of one run: its lease token, the shards it holds, its time limits, and why (and
    until when) it sends no dead letters."""

    token: bytes
    deadline: float
    work_deadline: float
    owned: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    sweeps: dict[int, _ShardSweep] = field(default_factory=dict)
    in_doubt: bool = False
    poll_until: float | None = None
    next_acquire: float = 0.0
    dead_letters_down: str | None = None
    dead_letters_retry_at: float = 0.0


@dataclass(slots=True)
class _Pass:
    """One batch.  It is finalized one pass later, while the next batch is on the wire; until
    then its rows stay PENDING, so the next read leaves them out (``in_flight``) and holds back
    the aggregates it did not deliver in full (``unsettled``)."""

    plan: FinalizePlan = field(default_factory=FinalizePlan)
    in_flight: dict[int, list[int]] = field(default_factory=dict)
    unsettled: set[AggregateKey] = field(default_factory=set)
    unavailable: str | None = None


class _Finalizer:
    """The fenced finalize of one batch at a time.  Given a store of its own (a second
    connection) it runs in a worker thread, overlapping the next batch's read and send; else it
    runs inline when started."""

    def __init__(self, store: OutboxStore, background: OutboxStore | None) -> None:
        self.store = background or store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="outbox-finalize") if background else None
        self.pending: tuple[_Pass, Future[FinalizeResult] | FinalizeResult | None] | None = None

    def start(self, token: bytes, owned: list[int], step: _Pass, lease_seconds: float) -> None:
        if not step.plan or not owned:
            self.pending = (step, None)
            return
        args = (token, list(owned), step.plan, lease_seconds)
        if self.pool is not None:
            self.pending = (step, self.pool.submit(self.store.finalize, *args))
        else:
            self.pending = (step, None)  # recorded first: a failing inline finalize is not retried
            self.pending = (step, self.store.finalize(*args))

    def join(self) -> tuple[_Pass, FinalizeResult | None] | None:
        if self.pending is None:
            return None
        step, outcome = self.pending
        self.pending = None
        return step, outcome.result() if isinstance(outcome, Future) else outcome

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


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
        finalize_store: OutboxStore | None = None,
    ) -> None:
        self.store = store
        # A second connection for the finalize, so it runs beside the next batch (optional).
        self.finalize_store = finalize_store
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
        # The lease outlives the invocation: when it expires the holder is gone, not paused.
        return max(0.0, deadline - self.clock.monotonic()) + self.settings.lease_margin_seconds

    def _relay(self, summary: Summary, deadline: float) -> None:
        """Lease free shards (up to ``max_shards_per_run`` at a time) and drain them pass by pass.
        Then either keep polling them (the poll window) or give them back and take the next
        free ones, each shard at most once per run.

        Passes are pipelined: while batch N is finalized in the database (on the finalize
        store's own connection), batch N+1 is read and handed to Kafka."""
        run = _Run(
            token=uuid.uuid4().bytes, deadline=deadline, work_deadline=deadline - FINALIZE_RESERVE_SECONDS
        )
        if self.settings.poll_window_seconds > 0:
            run.poll_until = min(
                self.clock.monotonic() + self.settings.poll_window_seconds, run.work_deadline
            )
        finalizer = _Finalizer(self.store, self.finalize_store)
        previous: _Pass | None = None  # the batch being finalized: its rows are still PENDING
        try:
            while True:
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
                if self.clock.monotonic() + MIN_PASS_SECONDS >= run.work_deadline:
                    summary.stopped_by = "deadline"
                    break
                batch, selection = self._read(active, run.sweeps, budget, previous)
                in_flight = self.publisher.send([m for _, m in selection.sendable], run.work_deadline)
                just_finalized = self._join(finalizer, run, summary)
                step = self._settle(selection, in_flight.wait(run.work_deadline), run)
                # A shard with rows in flight is read again once they are finalized: only then
                # can it tell what is left.
                self._advance(
                    batch, run.sweeps, self._page(len(active)), set(step.in_flight) | just_finalized
                )
                summary.passes += 1
                run.in_doubt = run.in_doubt or self.publisher.in_doubt
                finalizer.start(run.token, run.owned, step, self._lease_seconds(run.deadline))
                previous = step
                if step.unavailable is not None:
                    summary.error = f"kafka unavailable: {step.unavailable}"
                    summary.stopped_by = "kafka_unavailable"
                    break
        finally:
            try:
                self._join(finalizer, run, summary)
            finally:
                finalizer.close()
                if run.owned:
                    # After a timed-out flush, sends may still land: keep others out for the margin.
                    grace = self.settings.lease_margin_seconds if run.in_doubt else 0.0
                    try:
                        self.store.release(run.token, run.owned, grace)
                    except StoreUnavailable:
                        log.warning("could not release shards; their leases expire on their own")

    def _join(self, finalizer: _Finalizer, run: _Run, summary: Summary) -> set[int]:
        """Wait for the batch being finalized and account for it; shards found taken over are
        dropped.  Returns the shards that batch had rows in."""
        joined = finalizer.join()
        if joined is None:
            return set()
        step, result = joined
        if result is not None:
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

    def _event_budget(self, summary: Summary, previous: _Pass | None) -> int | None:
        if self.settings.max_events is None:
            return None
        not_final = len(previous.plan.published) if previous is not None else 0
        return max(0, self.settings.max_events - summary.published - not_final)

    def _read(
        self, active: list[int], sweeps: dict[int, _ShardSweep], budget: int | None, previous: _Pass | None
    ) -> tuple[dict[int, list[OutboxRecord]], ordering.Selection]:
        """Read each active shard's head and apply the head-of-line rule to it."""
        in_flight = previous.in_flight if previous is not None else {}
        records = self.store.read_heads(
            {s: sweeps[s].cursor for s in active}, self._page(len(active)), in_flight
        )
        batch: dict[int, list[OutboxRecord]] = {s: [] for s in active}
        for record in records:
            batch[record.shard].append(record)
        blocked: set[AggregateKey] = set(previous.unsettled) if previous is not None else set()
        for shard in active:
            if sweeps[shard].cursor:
                blocked |= self.store.pending_keys_up_to(shard, sweeps[shard].cursor)
        cap = None if budget is None else min(budget, self.settings.batch_size)
        return batch, ordering.select(records, blocked, self._encode, cap)

    def _page(self, shards: int) -> int:
        """Rows read per shard in a pass: the batch shared by the shards being read."""
        return max(1, math.ceil(self.settings.batch_size / shards))

    def _settle(self, selection: ordering.Selection, results: list[SendResult], run: _Run) -> _Pass:
        """Turn Kafka's answers into the batch's finalize plan (dead letters sent first)."""
        step = _Pass()
        sent = [record for record, _ in selection.sendable]
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
        if letters and self.clock.monotonic() < run.work_deadline:
            self._dead_letter(letters, step, run)

        published = set(step.plan.published)
        for record in sent + [r for r, _ in selection.invalid]:
            step.in_flight.setdefault(record.shard, []).append(record.id)
            if record.id not in published:
                step.unsettled.add(record.key)
        return step

    def _dead_letter(self, letters: list[DeadLetter], step: _Pass, run: _Run) -> None:
        """Send to the DLQ first; only what it acknowledged becomes DEAD.  The rest backs off
        without an attempt charged: a dead-letter outage is not the row's fault."""
        acks = self._send_dead_letters(letters, run)
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
                # At least the base delay: a queue that just failed is not tried again at once.
                jittered = self.policy.next_delay(letter.record.attempts, self.rng)
                delay = max(self.settings.backoff_base_seconds, jittered)
                step.plan.retries.append(
                    RetryDecision(
                        letter.record.id, delay, f"dead-letter queue: {error}", charge_attempt=False
                    )
                )

    def _send_dead_letters(self, letters: list[DeadLetter], run: _Run) -> list[str | None]:
        """The sink's answer per letter, waited for until the run's work deadline at most (the
        finalize reserve stays free).  A send that fails as a whole pauses dead letters for
        ``DEAD_LETTER_PAUSE_SECONDS``; meanwhile every letter gets that failure as its answer."""
        now = self.clock.monotonic()
        if run.dead_letters_down is not None and now < run.dead_letters_retry_at:
            return [run.dead_letters_down] * len(letters)
        seconds = run.work_deadline - now
        try:
            acks = _within(seconds, partial(self.dead_letters.send, letters))
        except TimeoutError:
            acks = [f"no answer within {seconds:.1f} s (the run's deadline)"] * len(letters)
        if all(error is not None for error in acks):
            run.dead_letters_down = acks[0]
            run.dead_letters_retry_at = self.clock.monotonic() + DEAD_LETTER_PAUSE_SECONDS
            log.warning("dead-letter queue unavailable", extra={"error": acks[0], "letters": len(letters)})
        else:
            run.dead_letters_down = None
        return acks

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
        m.count(MetricName.RUN_FAILED if summary.error else MetricName.RUN_SUCCEEDED, 1)
        m.gauge(MetricName.RUN_DURATION_MS, seconds * 1000.0, "Milliseconds")


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, or :class:`TimeoutError` after ``seconds``.  The call runs in a daemon
    thread: a blocked socket cannot be interrupted, so on a timeout it finishes there on its own
    (its own bounds end it) and its answer is dropped; the rows it concerned stay PENDING."""
    done: Future[T] = Future()

    def work() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            done.set_exception(exc)

    threading.Thread(target=work, name="outbox-dead-letters", daemon=True).start()
    return done.result(timeout=max(0.0, seconds))
