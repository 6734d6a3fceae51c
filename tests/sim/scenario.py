"""One seed of the simulation: a swarm of faults, writers, Lambda invocations, then the checks.

A seed draws which fault kinds are on (swarm testing), the relay's settings and the workload, then
runs writers and invocations against the simulated database, Kafka and SQS for a noisy phase,
stops every fault, and runs the relay until it should have finished everything (liveness).  The
invariants are checked as the run goes (at every finalize, at every invocation's end) and at the
end (order in every partition, nothing lost, every letter accounted for).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import random
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from outbox_relay.config import KafkaSettings, RelaySettings
from outbox_relay.dead_letters import DeadLetterDispatch
from outbox_relay.deadletter_sqs import SqsDeadLetterSink
from outbox_relay.messages import encode
from outbox_relay.model import FinalizePlan, OutboxRecord
from outbox_relay.ports import NullMetrics
from outbox_relay.publisher_kafka import KafkaPublisher
from outbox_relay.relay import Relay

from . import content
from .kafka import PARTITIONS, REFUSED, Appended, Cluster, Topic, factory
from .sqs import Queue, SimSqsClient
from .store import Database, Row, SimStore
from .world import Actor, Hung, Killed, Process, SimClock, World

NOISY_SECONDS = 300.0  # the phase with faults
# Scheduled runs after the faults stop.  Past QUIET_RUNS, runs go on while rows are left and one
# of the last QUIET_RUNS runs settled some (a slow drain, e.g. one row per pass under a BUGGIFY
# knob), up to MAX_QUIET_RUNS; QUIET_RUNS runs in a row that settle nothing are a stall.
QUIET_RUNS = 12
MAX_QUIET_RUNS = 200
SCHEDULE_SECONDS = 60.0
# Invocations of one process in which one record may put a producer in its fatal state before
# it is found (isolation cut short), not counting those in which Kafka itself failed a request.
CULPRIT_RUNS = 3


@dataclass(frozen=True)
class Violation:
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass
class Report:
    seed: int
    violations: list[Violation] = field(default_factory=list)
    rows: int = 0
    published: int = 0
    dead: int = 0
    invocations: int = 0
    steps: int = 0
    swarm: dict[str, Any] = field(default_factory=dict)
    mutation: str | None = None
    profile: str | None = None
    # First copies out of order that kafka-python's epoch bump explains (docs/reliability.md).
    epoch_bump_inversions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def repro(self) -> str:
        mutated = f" --mutation {self.mutation}" if self.mutation else ""
        profiled = f" --profile {self.profile}" if self.profile else ""
        return f"python -m tests.sim --seed {self.seed}{profiled}{mutated} -v"


@dataclass
class Env:
    """A Lambda execution environment: clients kept while warm, frozen between invocations."""

    process: Process
    store: SimStore
    publisher: KafkaPublisher
    dispatch: DeadLetterDispatch
    busy: bool = False


@dataclass
class Truth:
    """What the simulation knows about a row that the relay does not."""

    good: bool  # the relay can encode it
    topic: str | None  # the topic it goes to (None: no legal one)
    size: int  # its record's size, as the broker counts it


class Sim:
    def __init__(self, seed: int, profile: str | None = None) -> None:
        self.seed = seed
        self.world = World(seed)
        rng = self.world.rng
        self.report = Report(seed, profile=profile)
        self.db = Database(self.world, clock_skew=rng.uniform(-5, 5))
        self.cluster = Cluster(self.world)
        self.queue = Queue(self.world)
        self.swarm = self._draw_swarm(rng)
        self.settings = self._draw_settings(rng)
        self.kafka = self._draw_kafka(rng)
        if profile is not None:
            PROFILES[profile](self, rng)
        self.envs: list[Env] = []
        self.truth: dict[int, Truth] = {}
        self.unhealthy_topics: set[str] = set()  # ever missing, denied or too small for a row
        self.db.on_finalize = self._on_finalize
        self.db.max_batch_bytes = self.settings.max_batch_bytes
        self.running: dict[Actor, tuple[float, float, Env]] = {}  # invocation -> (start, hard end)
        self.frozen_inside: set[Actor] = set()
        self.end = 0.0  # where the world stops: the scheduler moves it while a drain goes on

    # --- the draw -----------------------------------------------------------------------

    def _draw_swarm(self, rng: random.Random) -> dict[str, Any]:
        def on(p: float = 0.5) -> bool:
            return rng.random() < p

        swarm = {
            "writers": rng.randint(1, 4),
            "aggregates": rng.choice([2, 5, 12, 40]),
            "rows_per_second": rng.choice([0.5, 2.0, 8.0]),
            "long_transactions": on(),
            "one_shard": on(0.3),
            "hostile_rows": on(),
            "bad_encodings": on(0.3),
            "big_rows": on(0.4),
            "too_big_for_broker": on(0.3),
            "refused_by_broker": on(0.3),
            "missing_topic": on(0.3),
            "denied_topic": on(0.3),
            "db_drops": on(0.3),
            "db_lost_acks": on(0.3),
            "db_stalls": on(0.2),
            "db_slow": on(0.2),
            "db_failover": on(0.2),
            "kafka_outage": on(0.25),
            "kafka_retriable": on(0.3),
            "kafka_epoch_bumps": on(0.3),
            "kafka_slow_acks": on(0.3),
            "kafka_lost_acks": on(0.2),
            "kafka_slow_broker": on(0.3),
            "kafka_partition_outages": on(0.3),
            "zombie_senders": on(0.3),
            "sqs_outage": on(0.25),
            "sqs_entry_failures": on(0.3),
            "sqs_lost_answers": on(0.2),
            "freezes": on(0.3),
            "kills": on(0.2),
            "manual_invocations": on(0.4),
            "reinvoke": on(0.4),
            # Knobs (FoundationDB's BUGGIFY): the relay's limits made small, so the paths past
            # them are taken with a small workload too.
            "knobs": {
                "MAX_SKIPPED_KEYS": rng.choice([100, 100, 2, 0]),
                # A missing or denied topic tried again soon: its fatal state comes back often.
                "TOPIC_MEMORY_SECONDS": rng.choice([30.0, 30.0, 0.5]),
                "TOPIC_WAIT_SECONDS": rng.choice([30.0, 30.0, 1.0]),
            },
        }
        self.report.swarm = swarm
        return swarm

    def _draw_settings(self, rng: random.Random) -> RelaySettings:
        return RelaySettings(
            batch_size=rng.choice([1, 2, 3, 5, 8, 20, 100]),
            max_batch_bytes=rng.choice([8_192, 65_536, 1_048_576]),
            max_attempts=rng.choice([2, 3, 5]),
            backoff_base_seconds=rng.choice([0.2, 1.0]),
            backoff_max_seconds=rng.choice([5.0, 20.0]),
            lease_margin_seconds=rng.choice([2.0, 10.0]),
            stop_margin_seconds=1.0,
            max_message_bytes=60_000,
            max_shards_per_run=rng.choice([0, 0, 1, 4]),
            poll_window_seconds=rng.choice([0.0, 0.0, 5.0, 50.0]),
            poll_interval_seconds=rng.choice([0.05, 0.5]),
        )

    def _draw_kafka(self, rng: random.Random) -> KafkaSettings:
        request = rng.choice([1_000, 3_000, 10_000])
        return KafkaSettings(
            bootstrap_servers=("sim:9092",),
            request_timeout_ms=request,
            delivery_timeout_ms=request + rng.choice([0, 2_000, 20_000]),
            max_block_ms=rng.choice([500, 2_000, 5_000]),
            batch_bytes=rng.choice([2_048, 16_384, 262_144]),
        )

    def _setup_faults(self) -> None:
        rng, s = self.world.rng, self.swarm

        def windows(count: int, longest: float) -> list[tuple[float, float]]:
            out = []
            for _ in range(count):
                start = rng.uniform(0, NOISY_SECONDS)
                out.append((start, start + rng.uniform(1.0, longest)))
            return out

        f = self.db.faults
        f.drop = 0.02 if s["db_drops"] else 0.0
        f.lost_ack = 0.02 if s["db_lost_acks"] else 0.0
        f.stall = 0.005 if s["db_stalls"] else 0.0
        f.slow = 0.05 if s["db_slow"] else 0.0
        f.read_only_windows = windows(2, 20.0) if s["db_failover"] else []
        k = self.cluster.faults
        k.outages = windows(2, 40.0) if s["kafka_outage"] else []
        k.retriable = 0.05 if s["kafka_retriable"] else 0.0
        k.epoch_bump = 0.03 if s["kafka_epoch_bumps"] else 0.0
        k.slow_ack = 0.05 if s["kafka_slow_acks"] else 0.0
        k.lost_ack = 0.02 if s["kafka_lost_acks"] else 0.0
        k.zombie = 0.5 if s["zombie_senders"] else 0.0
        k.slow_broker = 0.02 if s["kafka_slow_broker"] else 0.0
        if s["kafka_partition_outages"]:
            topics = ["outbox.event.order", "outbox.event.user", "explicit.topic"]
            k.partition_outages = [
                (rng.choice(topics), rng.randrange(PARTITIONS), a, b) for a, b in windows(4, 15.0)
            ]
        q = self.queue.faults
        q.outages = windows(2, 40.0) if s["sqs_outage"] else []
        q.entry_failure = 0.1 if s["sqs_entry_failures"] else 0.0
        q.lost_answer = 0.05 if s["sqs_lost_answers"] else 0.0
        self.cluster.topics = {
            "outbox.event.order": Topic(),
            "outbox.event.user": Topic(),
            "outbox.event.big": Topic(max_message_bytes=20_000 if s["too_big_for_broker"] else 1_048_588),
            "explicit.topic": Topic(),
        }
        if s["missing_topic"]:
            self.cluster.topics["outbox.event.missing"] = Topic(exists=False)
        else:
            self.cluster.topics["outbox.event.missing"] = Topic()
        self.cluster.topics["outbox.event.denied"] = Topic(writable=not s["denied_topic"])
        for name, topic in self.cluster.topics.items():
            if not topic.exists or not topic.writable or topic.max_message_bytes < 60_000:
                self.unhealthy_topics.add(name)

    # --- the writers --------------------------------------------------------------------

    def _row_columns(self, rng: random.Random, aggregate: tuple[str, str]) -> dict[str, Any]:
        s = self.swarm
        aggregate_type, aggregate_id = aggregate
        columns: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode(),
            "aggregate_type": aggregate_type.encode(),
            "aggregate_id": aggregate_id.encode(),
            "event_type": b"changed",
            "payload": content.payload(rng, rng.choice([10, 100, 800])),
            "topic": None,
            "headers": None,
            "seq": None,
        }
        if s["big_rows"] and rng.random() < 0.15:
            columns["payload"] = content.payload(rng, rng.choice([5_000, 25_000, 70_000]))
        if s["refused_by_broker"] and rng.random() < 0.02:
            columns["payload"] = b'{"' + REFUSED + b'": true}'
        if rng.random() < 0.1:
            columns["headers"] = b'{"trace": "abc"}'
        if rng.random() < 0.05:
            columns["topic"] = b"explicit.topic"
        if s["hostile_rows"] and rng.random() < 0.08:
            kind = rng.choice(["json", "headers", "topic", "reserved", "deep"])
            if kind == "json":
                columns["payload"] = b'{"a": 1'
            elif kind == "headers":
                columns["headers"] = b'["not an object"]'
            elif kind == "topic":
                columns["topic"] = b"bad topic!"
            elif kind == "reserved":
                columns["topic"] = b"__consumer_offsets"
            else:
                columns["payload"] = b"[" * 5000 + b"]" * 5000
        if s["bad_encodings"] and rng.random() < 0.06:
            column = rng.choice(content.TEXT_COLUMNS)
            current = columns[column] if columns[column] is not None else b'{"k": "v"}'
            columns[column] = content.hostile(rng, current)
        return columns

    def _writer(self, n: int) -> None:
        world, rng, s = self.world, self.world.rng, self.swarm
        types = ["order", "user", "big", "missing", "denied"]
        names = [f"{n}-{i}" if rng.random() < 0.5 else f"shared-{i}" for i in range(s["aggregates"])]
        if s["one_shard"]:  # every aggregate in shard 3: one busy shard, reads that page
            names = [_in_shard(name, 3) for name in names]
        aggregates = [(rng.choice(types), name) for name in names]
        while world.now < NOISY_SECONDS:
            world.pause(rng.expovariate(s["rows_per_second"] / s["writers"]))
            aggregate = rng.choice(aggregates)
            lock = aggregate[0].encode(), aggregate[1].encode()
            self._lock(lock)  # the writer locks its aggregate first (SELECT ... FOR UPDATE)
            try:
                rows = []
                for _ in range(rng.choice([1, 1, 1, 2, 3])):
                    rows.append(self.db.insert(self._row_columns(rng, aggregate)))
                    world.pause(rng.uniform(0.0001, 0.002))
                long = s["long_transactions"] and rng.random() < 0.4
                if long:
                    world.pause(rng.uniform(0.5, 8.0))
                if rng.random() < 0.05:
                    self.db.rollback(rows)
                else:
                    self._commit(rows)
                    if long and rng.random() < 0.5:
                        # The aggregate's next event right behind, in a transaction of its own:
                        # a later id committed a moment after a much earlier one.
                        world.pause(rng.uniform(0.0001, 0.001))
                        self._commit([self.db.insert(self._row_columns(rng, aggregate))])
            finally:
                self._unlock(lock)

    def _commit(self, rows: list[Row]) -> None:
        self.db.commit(rows)
        for row in rows:
            self.truth[row.id] = self._judge(row)

    def _lock(self, key: tuple[bytes, bytes]) -> None:
        """A row lock: a waiter is woken the moment the holder commits (InnoDB's lock queue)."""
        world = self.world
        waiters = self.db.aggregate_locks.get(key)
        if waiters is None:
            self.db.aggregate_locks[key] = []
            return
        me = world.block()
        waiters.append(me)
        while self.db.aggregate_locks.get(key) is not None and me in waiters:
            world.wait(3600.0)

    def _unlock(self, key: tuple[bytes, bytes]) -> None:
        waiters = self.db.aggregate_locks[key]
        if waiters:
            nxt = waiters.pop(0)  # handed over: it holds the lock now
            self.world.wake(nxt)
        else:
            del self.db.aggregate_locks[key]

    def _judge(self, row: Row) -> Truth:
        """Can the relay ever publish this row (its content, its topic)?"""
        try:
            record = content.record_of(row, True, 0.0)
            record = dataclasses.replace(
                record,
                payload=row.payload,
                headers=None if row.headers is None else content.decode_text(row.headers),
                loaded=True,
            )
            message = encode(record, self.settings)
        except Exception:
            return Truth(False, None, len(row.payload))
        size = len(message.key) + len(message.value) + sum(len(k) + len(v) for k, v in message.headers) + 20
        topic = self.cluster.topics.get(message.topic)
        good = (topic is None or size <= topic.max_message_bytes) and REFUSED not in row.payload
        if message.topic not in self.cluster.topics:
            self.unhealthy_topics.add(message.topic)
        return Truth(good, message.topic, size)

    # --- Lambda -------------------------------------------------------------------------

    def _env(self) -> Env:
        idle = [e for e in self.envs if not e.busy and not e.process.killed]
        if idle and self.world.rng.random() < 0.8:
            return self.world.rng.choice(idle)
        process = Process(f"lambda-{len(self.envs)}")
        store = SimStore(self.db, content.record_of)
        clock = SimClock(self.world)
        publisher = KafkaPublisher(self.kafka, factory=factory(self.cluster, process), clock=clock)
        sink = SqsDeadLetterSink(SimSqsClient(self.queue), "sim://dlq")  # type: ignore[arg-type]
        env = Env(process, store, publisher, DeadLetterDispatch(sink, runner=_runner(self.world)))
        self.envs.append(env)
        return env

    def invoke(self, timeout: float) -> None:
        """An invocation: a warm environment (or a new one) runs the relay to its deadline."""
        env = self._env()
        env.busy = True
        world = self.world
        start, hard_end = world.now, world.now + timeout
        deadline = hard_end - self.settings.stop_margin_seconds
        self.report.invocations += 1

        world.thaw(env.process)
        env.process.runs += 1  # producers made from now on belong to this invocation

        def body() -> None:
            env.store.deadline = deadline
            relay = Relay(
                env.store,
                env.publisher,
                env.dispatch,
                NullMetrics(),
                SimClock(world),
                self.settings,
                owner=env.process.name,
                rng=random.Random(world.rng.random()),
            )
            try:
                relay.run(deadline)
            finally:
                if not env.process.killed:
                    env.busy = False
                    world.freeze(env.process)  # Lambda freezes the environment between invocations
            if self.swarm["reinvoke"] and world.now < NOISY_SECONDS and world.rng.random() < 0.3:
                # An operator (or a retry) invokes again at once: another environment may take
                # the shards this one just gave back.
                world.at(
                    world.now + world.rng.uniform(0.0, 2.0),
                    lambda: self.invoke(world.rng.choice([5.0, 30.0])),
                )

        actor = world.spawn(f"invoke-{self.report.invocations}", env.process, body)
        self.running[actor] = (start, hard_end, env)

        def timeout_reached() -> None:  # Lambda ends an invocation at its timeout, whatever it does
            if actor.done:
                return
            if actor not in self.frozen_inside:
                self.violation(
                    "deadline",
                    f"{actor.name} still running at its timeout ({timeout:.0f} s, t={world.now:.2f})",
                )
            world.kill(env.process)

        world.at(hard_end, timeout_reached)

    def _scheduler(self) -> None:
        world, rng = self.world, self.world.rng
        pending: list[int] = []  # rows still owed (_undone) after each quiet run
        while world.now < NOISY_SECONDS + QUIET_RUNS * SCHEDULE_SECONDS or self._draining(pending):
            self.invoke(rng.choice([10.0, 30.0, 60.0]))
            world.pause(SCHEDULE_SECONDS)
            if world.now > NOISY_SECONDS:
                pending.append(len(self._undone()))
            self.end = max(self.end, world.now + SCHEDULE_SECONDS)

    def _draining(self, pending: list[int]) -> bool:
        """Past the regular quiet runs: go on while rows are left that the last QUIET_RUNS runs
        moved (a slow drain is not a stall; the liveness check tells them apart)."""
        if not pending or not pending[-1] or len(pending) >= MAX_QUIET_RUNS:
            return False
        recent = pending[-QUIET_RUNS - 1 :]
        return recent[-1] < recent[0]

    def _manual(self) -> None:
        world, rng = self.world, self.world.rng
        while world.now < NOISY_SECONDS:
            world.pause(rng.expovariate(1 / 20))
            self.invoke(rng.choice([5.0, 15.0, 60.0]))

    def _chaos(self) -> None:
        """Freezes (a process without CPU for a while) and kills (SIGKILL) of running invocations."""
        world, rng, s = self.world, self.world.rng, self.swarm
        while world.now < NOISY_SECONDS:
            world.pause(rng.expovariate(1 / 15))
            running = [a for a in self.running if not a.done and not self.running[a][2].process.killed]
            if not running:
                continue
            actor = rng.choice(running)
            env = self.running[actor][2]
            if s["freezes"] and rng.random() < 0.5:
                self.frozen_inside.add(actor)
                world.freeze(env.process, world.now + rng.choice([0.2, 2.0, 15.0, 90.0]))
            elif s["kills"]:
                world.kill(env.process)

    # --- invariants ---------------------------------------------------------------------

    def violation(self, name: str, detail: str) -> None:
        self.report.violations.append(Violation(name, detail))

    def _on_finalize(self, token: bytes, plan: FinalizePlan, changed: list[Row]) -> None:
        appended = self.cluster.event_ids
        lettered = self.queue.outbox_ids
        retries = {d.record_id: d for d in plan.retries}
        for row in changed:
            truth = self.truth.get(row.id)
            if row.status == "PUBLISHED" and row.event_id.decode(errors="replace") not in appended:
                self.violation("published_without_record", f"row {row.id} marked PUBLISHED, not in Kafka")
            if row.status == "DEAD" and row.id not in lettered:
                self.violation("dead_without_letter", f"row {row.id} marked DEAD, no letter in the queue")
            if (
                row.status == "DEAD"
                and truth is not None
                and truth.good
                and truth.topic not in self.unhealthy_topics
            ):
                self.violation("good_row_dead", f"row {row.id} ({row.last_error})")
            decision = retries.get(row.id)
            if (
                decision is not None
                and truth is not None
                and truth.good
                and truth.topic not in self.unhealthy_topics
            ):
                if decision.charge_attempt:
                    self.violation("charged_for_another", f"row {row.id} charged: {decision.error}")
                elif "dead-letter" not in decision.error:
                    self.violation(
                        "delayed_for_another",
                        f"row {row.id} on healthy {truth.topic} waits: {decision.error}",
                    )

    def _check_end(self) -> None:
        rows = {r.id: r for r in self.db.visible()}
        by_event = {r.event_id: r for r in rows.values()}
        self.report.rows = len(rows)
        # Order: per partition log and aggregate (two aggregates of other types may share a key),
        # first copies and last copies in outbox id order.
        for (topic, _), log in sorted(self.cluster.logs.items()):
            per_key: dict[tuple[bytes, bytes], list[int]] = {}
            producer_of: dict[int, Appended] = {}  # row -> its first copy
            for record in log:
                row = by_event.get(record.event_id.encode())
                if row is None:
                    self.violation("unknown_record", f"{topic}: event {record.event_id} is no outbox row")
                    continue
                per_key.setdefault(row.key, []).append(row.id)
                producer_of.setdefault(row.id, record)
            for key, ids in per_key.items():
                first = list(dict.fromkeys(ids))
                last = list(dict.fromkeys(reversed(ids)))[::-1]
                inversion = self._first_copy_inversion(first, producer_of, rows)
                if inversion is not None:
                    self.violation("first_copy_order", f"{topic} key {key!r}: {inversion}")
                inversion = self._last_copy_inversion(last)
                if inversion is not None:
                    self.violation("last_copy_order", f"{topic} key {key!r}: {inversion}")
        # Cost: a record Kafka refuses for its own content puts a producer in its fatal state
        # (every record in flight fails with it).  A process that found it (it tried to
        # dead-letter it) never sends it again; one that did not (its isolation was cut short)
        # may try in a few invocations.
        for (process, event), fatals in sorted(self.cluster.culprit_fatals.items()):
            found = self.queue.tried.get((process, event))
            again = [at for at, _ in fatals if found is not None and at > found]
            # Invocations in which Kafka itself failed one of the process's requests do not
            # count: isolation stops at an outage, by design (the rest waits for the next run).
            runs = {run for _, run in fatals if (process, run) not in self.cluster.faulted_runs}
            if again:
                self.violation(
                    "culprit_repeated",
                    f"event {event} refused again at t={again[0]:.2f}: {process} knew it (t={found:.2f})",
                )
            elif len(runs) > CULPRIT_RUNS:
                self.violation(
                    "culprit_repeated",
                    f"event {event} stopped producers of {process} in {len(runs)} invocations",
                )
        for breach in self.db.memory_breaches[:3]:
            self.violation("memory", breach)
        # Letters: one per row, of a DEAD row.
        # Two letters of one row from one process are never allowed: a process remembers what
        # the queue acknowledged and what it abandoned.  From two processes they are the
        # documented at-least-once case (the first one's finalize failed, or its answer was lost).
        senders: dict[int, list[str]] = {}
        for letter in self.queue.letters:
            senders.setdefault(letter.outbox_id, []).append(letter.process)
        for outbox_id, names in senders.items():
            if len(names) != len(set(names)) and not self.swarm["sqs_lost_answers"]:
                self.violation("duplicate_letter", f"row {outbox_id}: {len(names)} letters from {names}")
        appended = self.cluster.event_ids
        for row in sorted(rows.values(), key=lambda r: r.id):
            self.report.published += row.status == "PUBLISHED"
            self.report.dead += row.status == "DEAD"
            if row.status == "PUBLISHED" and row.event_id.decode(errors="replace") not in appended:
                self.violation("lost", f"row {row.id} PUBLISHED but not in Kafka")
            if row.status == "PENDING" and row.attempts and self._held_by_topic(row):
                self.violation("charged_for_topic", f"row {row.id} charged {row.attempts} for its topic")
        # Liveness: after the quiet runs, every row is done, but those of a topic still down.
        for row in self._undone():
            self.violation(
                "not_done", f"row {row.id} still PENDING after the faults stopped ({row.last_error})"
            )

    def _held_by_topic(self, row: Row) -> bool:
        """A row that encodes (it has a topic) waits for its topic, poison or not: only a send
        could tell the relay that Kafka refuses it."""
        truth = self.truth.get(row.id)
        state = self.cluster.topics.get(truth.topic) if truth and truth.topic else None
        return state is not None and not (state.exists and state.writable)

    def _undone(self) -> list[Row]:
        """PENDING rows the relay owes: all but those of an aggregate whose head (or an earlier
        row) waits for a topic still missing or denied."""
        out = []
        for ids in self.db.pending.values():  # an aggregate's rows are all in one shard
            held: set[tuple[bytes, bytes]] = set()
            for row_id in ids:
                row = self.db.rows[row_id]
                if self._held_by_topic(row):
                    held.add(row.key)
                elif row.key not in held:
                    out.append(row)
        return sorted(out, key=lambda r: r.id)

    def _first_copy_inversion(
        self, first: list[int], producer_of: dict[int, Appended], rows: dict[int, Row]
    ) -> str | None:
        """The first pair of rows whose first copies are out of order, unless kafka-python's epoch
        bump explains it (the documented exception, counted in the report): the overtaken row's
        copy was failed in flight by an epoch bump of the producer that sent the later row's
        first copy, which then sent the batches behind it under the new epoch."""
        for i, later in enumerate(first):
            for earlier in first[i + 1 :]:
                if earlier > later:
                    continue
                event = rows[earlier].event_id.decode(errors="replace")
                bumped = self.cluster.bumped.get((producer_of[later].producer, event))
                if bumped is not None and producer_of[later].sent_at >= bumped:  # sent after the bump
                    self.report.epoch_bump_inversions += 1
                    continue
                return f"row {earlier} after row {later}"
        return None

    def _last_copy_inversion(self, last: list[int]) -> str | None:
        """The first pair of rows whose last copies are out of order: never allowed (a producer
        that failed with its own state is stopped only once its wire is empty, so a request of
        it cannot be appended after a re-send)."""
        for i, early in enumerate(last):
            for later in last[i + 1 :]:
                if later < early:
                    return f"row {later} after row {early}"
        return None

    # --- the run ------------------------------------------------------------------------

    def run(self) -> Report:
        world = self.world
        self._setup_faults()
        app = Process("app")
        for n in range(self.swarm["writers"]):
            world.spawn(f"writer-{n}", app, functools.partial(self._writer, n))
        control = Process("control")
        world.spawn("scheduler", control, self._scheduler)
        if self.swarm["manual_invocations"]:
            world.spawn("manual", control, self._manual)
        if self.swarm["freezes"] or self.swarm["kills"]:
            world.spawn("chaos", control, self._chaos)
        world.at(NOISY_SECONDS, self._quiet)
        self.end = NOISY_SECONDS + (QUIET_RUNS + 1) * SCHEDULE_SECONDS
        try:
            logging.getLogger("outbox_relay").setLevel(logging.CRITICAL)
            with _knobs(self.swarm["knobs"]):
                ran_to = -1.0
                while ran_to < self.end:  # the scheduler moves the end while the drain goes on
                    ran_to = self.end
                    world.run(ran_to)
        except Hung as exc:
            self.violation("hung", str(exc))
        for actor in world.actors:
            if actor.error is not None and not isinstance(actor.error, Killed):
                self.violation("crash", f"{actor.name}: {type(actor.error).__name__}: {actor.error}"[:300])
        self._check_end()
        self.report.steps = world.steps
        return self.report

    def _quiet(self) -> None:
        """Faults stop: the database, Kafka and SQS behave; a broken topic is fixed or not."""
        self.db.quiet = self.cluster.quiet = self.queue.quiet = True
        rng = self.world.rng
        for topic in self.cluster.topics.values():
            if not (topic.exists and topic.writable) and rng.random() < 0.5:
                topic.exists = topic.writable = True


def _in_shard(name: str, shard: int) -> str:
    """``name`` with a suffix that puts it in ``shard`` (the outbox's CRC32(aggregate_id) % 16)."""
    n = 0
    while zlib.crc32(f"{name}~{n}".encode()) % 16 != shard:
        n += 1
    return f"{name}~{n}"


def _first_inversion(ids: list[int]) -> str:
    for a, b in itertools.pairwise(ids):
        if b < a:
            return f"row {b} after row {a}"
    return "?"


def _runner(world: World) -> Callable[[float, Callable[[], Any]], Any]:
    """DeadLetterDispatch's runner in simulated time: the call runs as an actor of the caller's
    process and the caller waits at most ``seconds``; a call it stops waiting for goes on (and
    may land its letters later, after a thaw too)."""

    def run(seconds: float, call: Callable[[], Any]) -> Any:
        me = world.block()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = call()
            except BaseException as exc:  # handed to the waiting actor
                box["error"] = exc
            world.wake(me)

        world.spawn("dead-letters", me.process, work)
        world.wait(max(0.0, seconds))
        if "error" in box:
            raise box["error"]
        if "result" not in box:
            raise TimeoutError
        return box["result"]

    return run


@contextlib.contextmanager
def _knobs(knobs: dict[str, Any]) -> Iterator[None]:
    """Set the relay's module limits for one run (every module that holds a copy)."""
    from outbox_relay import kafka_memory, relay, shard_sweep

    holders = [relay, shard_sweep, kafka_memory]
    saved = [(m, name, getattr(m, name)) for m in holders for name in knobs if hasattr(m, name)]
    for module, name, _ in saved:
        setattr(module, name, knobs[name])
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _isolation_profile(sim: Sim, rng: random.Random) -> None:
    """Isolation under partition outages: passes of many rows of few aggregates, records the
    broker refuses (a fatal state, then isolation), leaders moving on single partitions, and a
    missing topic asked for often, whose metadata wait holds up a pass between two records of
    one aggregate (their batches are then created seconds apart, so one can expire while the
    other is still pending when another record's fatal error aborts it: finding 7's interleaving).
    A delivery timeout of one request timeout makes expiries common (any slow or lost answer is
    one); no kills or freezes (they cut passes short; the default swarm has them)."""
    sim.swarm.update(
        kills=False,
        freezes=False,
        one_shard=True,
        aggregates=rng.choice([2, 5]),
        rows_per_second=8.0,
        refused_by_broker=True,
        missing_topic=True,
        kafka_partition_outages=True,
        kafka_slow_acks=True,
        kafka_lost_acks=True,
    )
    sim.swarm["knobs"]["TOPIC_MEMORY_SECONDS"] = 0.5
    sim.settings = dataclasses.replace(sim.settings, batch_size=rng.choice([20, 100]))
    sim.kafka = dataclasses.replace(
        sim.kafka,
        request_timeout_ms=1_000,
        delivery_timeout_ms=1_000,
        max_block_ms=rng.choice([2_000, 5_000]),
        batch_bytes=rng.choice([2_048, 16_384]),
    )


# Swarm focus (``--profile NAME``): the seed draws everything else.
PROFILES: dict[str, Callable[[Sim, random.Random], None]] = {"isolation": _isolation_profile}


def run_seed(seed: int, mutation: str | None = None, profile: str | None = None) -> Report:
    """One seed; ``mutation``: with a known bug put back (tests/sim/mutations.py); ``profile``:
    with the swarm focused (PROFILES)."""
    if mutation is None:
        return Sim(seed, profile).run()
    from .mutations import MUTATIONS

    with MUTATIONS[mutation]():
        report = Sim(seed, profile).run()
    report.mutation = mutation
    return report


__all__ = ["OutboxRecord", "Report", "Sim", "Violation", "run_seed"]
