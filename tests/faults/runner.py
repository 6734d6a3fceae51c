"""Randomized fault injection on the real local stack, with the invariant checker at the end.

    .venv/bin/python -m tests.faults.runner --runs 100 --seed 1      # make faults
    .venv/bin/python -m tests.faults.runner --runs 1 --seed 42 -v    # replay one run

One run: writers insert events under the writer contract (lock the aggregate, then insert with
``seq`` = its new version), some large (20 to 200 KB), a few of them poison (oversized, not JSON,
too large for their topic's broker limit, or hostile: a lone surrogate in ``headers``, JSON nested
past the recursion limit, a Kafka-internal topic, control characters) or for a topic that does
not exist yet (held back, never charged, until the drain creates it); relay invocations run as
separate processes, two at a time, with short timeouts; and a fault injector, seeded, picks
faults at random moments:

    kill_relay           SIGKILL an invocation mid-batch
    stall_takeover       SIGSTOP an invocation, expire its leases, start a taker-over, then kill
                         the stalled one (Lambda never resumes a run past its deadline)
    kill_db_connection   KILL CONNECTION of a relay (or writer) session, at any moment, COMMITs
                         included
    lock_contention      hold every shard row FOR UPDATE past the relays' lock-wait timeout
    short_deadline       an invocation with 1.1-1.6 s to live: the deadline lands mid-flush
    dlq_unavailable      an invocation whose dead-letter queue does not exist
    dlq_stalled          an invocation whose SQS endpoint accepts and never answers
    kafka_restart        SIGKILL the broker and start it again (at most once per run)

Then the faults stop, healthy invocations drain what is left, and the checker compares the
outbox, every topic read back and the dead-letter queue.  Every invocation must return (a crash
is one that exited with an error and was not killed by a fault) within a peak RSS of
``MEMORY_CAP_MB``; no aggregate may be left pending after the drain.  Producer-epoch bumps are not
injected here (a real broker gives no handle on them): a scripted producer shows that rule
(``tests/unit/test_publisher_topics.py``).  Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pymysql
from kafka import KafkaAdminClient
from kafka import errors as kafka_errors

from outbox_relay.kafka_tools import ensure_topics, read_topics
from outbox_relay.migrate import apply, discover
from outbox_relay.sql import OutboxSql
from tests import support
from tests.faults.invariants import Row, Verdict, check

FAULTS = {
    "kill_relay": 3,
    "stall_takeover": 2,
    "kill_db_connection": 3,
    "lock_contention": 2,
    "short_deadline": 2,
    "dlq_unavailable": 1,
    "dlq_stalled": 1,
}
POISON = (
    "oversized",
    "not_json",
    "missing_topic",
    "broker_rejects",
    "surrogate_headers",
    "deep_json",
    "internal_topic",
    "control_chars",
)
MESSAGE_LIMIT = 256 * 1024
MEMORY_CAP_MB = 200.0

RELAY_CHILD = """
import json, os, sys
os.environ.update(json.loads(sys.argv[1]))
from outbox_relay.cli import LocalContext
from outbox_relay.handler import lambda_handler
summary = lambda_handler({}, LocalContext(float(sys.argv[2]), request_id=sys.argv[3]))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
with open(sys.argv[4], "w") as out:
    json.dump({"summary": summary, "peak_rss_mb": hwm / 1024}, out)
"""


def _create_topic(name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
    """Create a topic, waiting out a broker slow to give it a leader: kafka-python's admin waits
    10 s for the new topic's metadata, and twice on 2026-12-03 that was not enough (right after
    the stack started on a loaded machine, and after the runner's broker restart)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            ensure_topics([support.KAFKA], [name], partitions=partitions, configs=configs)
            return
        except kafka_errors.KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@dataclass
class RunResult:
    seed: int
    seconds: float
    written: int
    poison: int
    invocations: int
    faults: Counter[str]
    verdict: Verdict
    drain_rounds: int
    errors: list[str] = field(default_factory=list)
    crashed: int = 0
    starved: int = 0
    peak_rss_mb: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.errors and not self.crashed and not self.starved

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "written": self.written,
            "poison": self.poison,
            "invocations": self.invocations,
            "faults": dict(self.faults),
            "drain_rounds": self.drain_rounds,
            "crashed": self.crashed,
            "starved": self.starved,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "errors": self.errors,
            **self.verdict.as_dict(),
        }


class Run:
    """The state of one randomized run."""

    def __init__(
        self, seed: int, chaos_seconds: float, verbose: bool, kafka_restart: bool | None = None
    ) -> None:
        self.seed = seed
        self.kafka_restart = kafka_restart  # None: at random (three runs in ten)
        self.rng = random.Random(seed)
        self.chaos_seconds = chaos_seconds
        self.verbose = verbose
        self.database = f"faults_{seed}_{uuid.uuid4().hex[:6]}"
        self.prefix = f"f{seed}x{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.children: list[tuple[subprocess.Popen[bytes], str]] = []
        self.invocations = 0
        self.written = 0
        self.poison = 0
        self.faults: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stalled: set[int] = set()  # pids we SIGSTOPped: they are killed, never resumed
        self.killed: set[int] = set()  # pids a fault killed: no summary expected from them
        self.finished: list[tuple[subprocess.Popen[bytes], str]] = []
        self.sqs_stall: support.DelayProxy | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="outbox-faults-"))
        sqs = boto3.client("sqs", endpoint_url=support.MOTO)
        self.dlq = sqs.create_queue(QueueName=f"faults-{self.prefix}")["QueueUrl"]

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"  [{self.seed}] {text}", flush=True)

    # --- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        with support.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        with support.connect(self.database) as conn:
            apply(conn, OutboxSql(), discover(support.MIGRATIONS), lambda _line: None)
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE aggregates (id VARCHAR(64) PRIMARY KEY, version BIGINT NOT NULL)")
                cur.executemany("INSERT INTO aggregates VALUES (%s, 0)", [(f"acct-{n}",) for n in range(60)])
        _create_topic(f"{self.prefix}.acct", partitions=3)
        # A topic whose broker-side limit is below the producer's: the broker rejects, not us.
        _create_topic(f"{self.prefix}.blob", partitions=1, configs={"max.message.bytes": "2000"})

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "OUTBOX_DB_HOST": support.DB_HOST,
            "OUTBOX_DB_PORT": str(support.DB_PORT),
            "OUTBOX_DB_NAME": self.database,
            "OUTBOX_DB_USER": support.DB_USER,
            "OUTBOX_DB_PASSWORD": support.DB_PASSWORD,
            "KAFKA_BOOTSTRAP_SERVERS": support.KAFKA,
            "OUTBOX_TOPIC_TEMPLATE": self.prefix + ".{aggregate_type}",
            "DLQ_QUEUE_URL": self.dlq,
            "AWS_ENDPOINT_URL": support.MOTO,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "OUTBOX_BATCH_SIZE": str(self.rng.choice([50, 200, 2000])),
            "OUTBOX_MAX_SHARDS_PER_RUN": str(self.rng.choice([0, 4, 8])),
            "OUTBOX_LEASE_MARGIN_SECONDS": "1",
            "OUTBOX_MAX_ATTEMPTS": "3",
            "OUTBOX_BACKOFF_BASE_SECONDS": "0.05",
            "OUTBOX_BACKOFF_MAX_SECONDS": "0.3",
            "OUTBOX_MAX_MESSAGE_BYTES": str(MESSAGE_LIMIT),
            "OUTBOX_MAX_BATCH_BYTES": str(self.rng.choice([64 * 1024, 1024 * 1024, 8 * 1024 * 1024])),
            "OUTBOX_DB_LOCK_WAIT_TIMEOUT_SECONDS": "1",
            "KAFKA_REQUEST_TIMEOUT_MS": "1500",
            "KAFKA_DELIVERY_TIMEOUT_MS": "3000",
            "KAFKA_MAX_BLOCK_MS": "1500",
            **extra,
        }

    # --- actors ------------------------------------------------------------------------------

    def start_relay(self, timeout: float, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
        owner = f"relay-{uuid.uuid4().hex[:8]}"
        out = self.tmp / f"{owner}.json"
        child = subprocess.Popen(
            [sys.executable, "-c", RELAY_CHILD, json.dumps(self.env(**extra)), str(timeout), owner, str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=support.ROOT,
        )
        with self.lock:
            self.children.append((child, owner))
            self.finished.append((child, owner))
            self.invocations += 1
        return child, owner

    def running(self) -> list[tuple[subprocess.Popen[bytes], str]]:
        with self.lock:
            self.children = [(c, o) for c, o in self.children if c.poll() is None]
            return list(self.children)

    def scheduler(self) -> None:
        """Two invocations at a time, like overlapping scheduled runs."""
        while not self.stop.is_set():
            if len(self.running()) < 2:
                self.start_relay(self.rng.uniform(2.5, 4.5))
            time.sleep(0.1)

    def writer(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        conn: Any = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = support.connect(self.database)
                    conn.autocommit(False)
                self._write_one(conn, rng)
            except pymysql.err.Error:
                # A killed connection (a fault) or a lock wait: this event was not committed,
                # or was (an ambiguous COMMIT): the checker reads what the table holds.
                with contextlib.suppress(Exception):  # the connection is gone either way
                    conn.close()
                conn = None
            time.sleep(rng.uniform(0.002, 0.02))
        if conn is not None:
            conn.close()

    def _write_one(self, conn: Any, rng: random.Random) -> None:
        aggregate = f"acct-{rng.randrange(60)}"
        kind = rng.choice(POISON) if rng.random() < 0.03 else "ok"
        topic = headers = None
        pad = (
            rng.randrange(20_000, 200_000) if kind == "ok" and rng.random() < 0.05 else rng.randrange(50, 400)
        )
        body = json.dumps({"aggregate": aggregate, "kind": kind, "pad": "p" * pad}).encode()
        if kind == "oversized":  # never loaded: dead-lettered by its size
            body = json.dumps({"pad": "o" * (MESSAGE_LIMIT + 1000)}).encode()
        elif kind == "not_json":
            body = b"{not json"
        elif kind == "missing_topic":
            topic = f"{self.prefix}.missing"
        elif kind == "broker_rejects":
            topic, body = f"{self.prefix}.blob", json.dumps({"pad": "b" * 3000}).encode()
        elif kind == "surrogate_headers":
            headers = '{"trace": "\\ud800"}'
        elif kind == "deep_json":
            body = b"[" * 5000 + b"]" * 5000
        elif kind == "internal_topic":
            topic = "__consumer_offsets"
        elif kind == "control_chars":  # not JSON, and its dead letter must escape them for SQS
            body, headers = b"\x00\x07\xef\xbf\xbe", '{"ctl": "\\u0000\\u0007\\ufffe\\uffff"}'
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM aggregates WHERE id = %s FOR UPDATE", (aggregate,))
            (version,) = cur.fetchone()
            cur.execute(
                "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, topic,"
                " headers, seq) VALUES (%s, 'acct', %s, 'Changed', %s, %s, %s, %s)",
                (str(uuid.uuid4()), aggregate, body, topic, headers, version + 1),
            )
            cur.execute("UPDATE aggregates SET version = %s WHERE id = %s", (version + 1, aggregate))
        conn.commit()
        with self.lock:
            self.written += 1
            self.poison += kind != "ok"

    # --- faults ------------------------------------------------------------------------------

    def injector(self, kafka_restart_at: float | None) -> None:
        started = time.monotonic()
        kinds, weights = zip(*FAULTS.items(), strict=True)
        while not self.stop.wait(self.rng.uniform(0.3, 1.2)):
            if kafka_restart_at is not None and time.monotonic() - started >= kafka_restart_at:
                kafka_restart_at = None
                self.fault("kafka_restart")
                continue
            self.fault(self.rng.choices(kinds, weights)[0])

    def fault(self, kind: str) -> None:
        try:
            self._fault(kind)
        except (pymysql.err.Error, OSError, subprocess.SubprocessError) as exc:
            # The injector's own statement lost to another fault (a lock wait, a killed
            # session): the fault still happened in part; the relay is judged by the checker.
            self.faults[f"{kind} (partly)"] += 1
            self.say(f"fault {kind} partly failed: {exc}")

    def _fault(self, kind: str) -> None:
        running = [(c, o) for c, o in self.running() if c.pid not in self.stalled]
        victim = self.rng.choice(running) if running else None
        if kind in ("kill_relay", "stall_takeover") and victim is None:
            return
        self.faults[kind] += 1
        self.say(f"fault {kind}")
        if kind == "kill_relay" and victim is not None:
            self.killed.add(victim[0].pid)
            victim[0].send_signal(signal.SIGKILL)
        elif kind == "stall_takeover" and victim is not None:
            child, owner = victim
            child.send_signal(signal.SIGSTOP)
            self.stalled.add(child.pid)
            try:
                with support.connect(self.database) as conn, conn.cursor() as cur:
                    cur.execute(
                        "UPDATE outbox_shard SET lease_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND"
                        " WHERE lease_owner = %s",
                        (owner,),
                    )
                self.start_relay(self.rng.uniform(3.0, 6.0))
            finally:
                # Killed even when the expiry lost to another fault: a stopped process left
                # behind would outlive its timeout (seed 26 of the first long run).
                delay = self.rng.uniform(0.5, 1.5)
                threading.Timer(delay, lambda: child.send_signal(signal.SIGKILL)).start()
        elif kind == "kill_db_connection":
            with support.connect() as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.PROCESSLIST WHERE db = %s AND id <> CONNECTION_ID()",
                    (self.database,),
                )
                ids = [row[0] for row in cur.fetchall()]
                if ids:
                    with contextlib.suppress(pymysql.err.Error):  # it may have ended meanwhile
                        cur.execute(f"KILL CONNECTION {int(self.rng.choice(ids))}")
        elif kind == "lock_contention":
            hold = self.rng.uniform(1.5, 2.5)
            threading.Thread(target=self._hold_shard_locks, args=(hold,)).start()
        elif kind == "short_deadline":
            self.start_relay(self.rng.uniform(1.1, 1.6))
        elif kind == "dlq_unavailable":
            self.start_relay(
                self.rng.uniform(3.0, 5.0), DLQ_QUEUE_URL=self.dlq.rsplit("/", 1)[0] + "/no-such-queue"
            )
        elif kind == "dlq_stalled":
            if self.sqs_stall is None:
                self.sqs_stall = support.DelayProxy(port=0, upstream=("127.0.0.1", 5000))
                self.sqs_stall.stall = True
            self.start_relay(self.rng.uniform(3.0, 5.0), AWS_ENDPOINT_URL_SQS=self.sqs_stall.url)
        elif kind == "kafka_restart":
            support.stack("kill", "kafka")
            time.sleep(self.rng.uniform(0.5, 2.0))
            support.stack("up", "kafka")

    def _hold_shard_locks(self, seconds: float) -> None:
        try:
            with support.connect(self.database) as conn:
                conn.begin()
                with conn.cursor() as cur:
                    cur.execute("SELECT shard FROM outbox_shard FOR UPDATE")
                    time.sleep(seconds)
                conn.rollback()
        except pymysql.err.Error:
            pass  # killed by another fault

    # --- the run -----------------------------------------------------------------------------

    def execute(self) -> RunResult:
        started = time.monotonic()
        self.setup()
        restart = self.rng.random() < 0.3 if self.kafka_restart is None else self.kafka_restart
        kafka_restart_at = self.rng.uniform(1, self.chaos_seconds - 3) if restart else None
        actors = [threading.Thread(target=self.writer, args=(n,)) for n in range(3)]
        actors += [
            threading.Thread(target=self.scheduler),
            threading.Thread(target=self.injector, args=(kafka_restart_at,)),
        ]
        for actor in actors:
            actor.start()
        time.sleep(self.chaos_seconds)
        self.stop.set()
        for actor in actors:
            actor.join()
        for child, owner in self.running():
            try:
                child.wait(timeout=15)  # every invocation's timeout is under 5 s
            except subprocess.TimeoutExpired:
                self.killed.add(child.pid)
                child.kill()
                if child.pid not in self.stalled:
                    self.errors.append(f"invocation {owner} ran past its timeout")
        support.stack("up", "kafka")  # idempotent: it is up unless the last fault just killed it
        # Events for a missing topic are held back (a per-topic outage, never charged): the
        # operator creates the topic and they go out, in order, with the rest.
        _create_topic(f"{self.prefix}.missing", partitions=1)
        rounds = self.drain()
        starved = self.starved()
        verdict = self.verify()
        crashed, peak = self.outcomes()
        self.cleanup()
        return RunResult(
            self.seed,
            time.monotonic() - started,
            self.written,
            self.poison,
            self.invocations,
            self.faults,
            verdict,
            rounds,
            self.errors,
            crashed,
            starved,
            peak,
        )

    def starved(self) -> int:
        """Aggregates the drain left pending (each drain round is a healthy invocation)."""
        with support.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(DISTINCT aggregate_type, aggregate_id) FROM outbox WHERE status = 'PENDING'"
            )
            (count,) = cur.fetchone() or (0,)
        return int(count)

    def outcomes(self) -> tuple[int, float]:
        """Invocations that crashed (exited with an error, or without a summary, and were not
        killed by a fault), and the highest peak RSS of those that returned."""
        crashed, peak = 0, 0.0
        for child, owner in self.finished:
            if child.poll() is None or child.pid in self.killed or child.pid in self.stalled:
                continue
            out = self.tmp / f"{owner}.json"
            if child.returncode != 0 or not out.exists():
                crashed += 1
                self.errors.append(f"invocation {owner} crashed (exit {child.returncode})")
                continue
            peak = max(peak, float(json.loads(out.read_text())["peak_rss_mb"]))
        if peak > MEMORY_CAP_MB:
            self.errors.append(f"an invocation peaked at {peak:.0f} MB RSS (cap {MEMORY_CAP_MB:.0f} MB)")
        return crashed, peak

    def drain(self) -> int:
        """Healthy invocations until nothing is pending (killed runs' leases expire first)."""
        for round_ in range(1, 31):
            child, _ = self.start_relay(20.0)
            child.wait()
            with support.connect(self.database) as conn, conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM outbox WHERE status = 'PENDING'")
                (left,) = cur.fetchone() or (0,)
            self.say(f"drain round {round_}: {left} pending")
            if left == 0:
                return round_
            time.sleep(1.0)
        self.errors.append("the backlog did not drain after the faults stopped")
        return 30

    def verify(self) -> Verdict:
        with support.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, event_id, COALESCE(topic, CONCAT(%s, '.', aggregate_type)), aggregate_id, seq,"
                " status, payload, last_error, available_at > UTC_TIMESTAMP(6) FROM outbox ORDER BY id",
                (self.prefix,),
            )
            rows = [
                Row(int(r[0]), r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7], bool(r[8]))
                for r in cur.fetchall()
            ]
        records = read_topics(
            [support.KAFKA],
            [f"{self.prefix}.acct", f"{self.prefix}.blob", f"{self.prefix}.missing"],
            timeout_seconds=60,
        )
        letters = support.Queue(self.dlq).messages()
        return check(rows, records, letters)

    def cleanup(self) -> None:
        if self.sqs_stall is not None:
            self.sqs_stall.close()
        with support.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        boto3.client("sqs", endpoint_url=support.MOTO).delete_queue(QueueUrl=self.dlq)
        # The run's topics go too: a broker holding thousands of old partitions restarts slowly
        # (the kafka_restart runs took 2 to 3 times as long on a broker kept for weeks).
        admin = KafkaAdminClient(bootstrap_servers=[support.KAFKA], client_id="faults-cleanup")
        try:
            with contextlib.suppress(kafka_errors.KafkaError):
                admin.delete_topics([f"{self.prefix}.{name}" for name in ("acct", "blob", "missing")])
        finally:
            admin.close()


def run_many(
    runs: int,
    seed: int,
    chaos_seconds: float,
    verbose: bool,
    restart_kafka_first: bool = False,
    out: Path | None = None,
) -> list[RunResult]:
    support.stack("up")
    results = []
    for n in range(runs):
        run_seed = seed + n
        kafka_restart = True if restart_kafka_first and n == 0 else None
        result = Run(run_seed, chaos_seconds, verbose, kafka_restart).execute()
        results.append(result)
        v = result.verdict
        print(
            f"run {n + 1}/{runs} seed {run_seed}: {'ok' if result.ok else 'FAILED'} "
            f"written {result.written} (poison {result.poison}), published {v.published}, dead {v.dead}, "
            f"lost {len(v.lost)}, order violations {len(v.order_violations)}, duplicates {v.duplicates}, "
            f"faults {dict(result.faults)}, {result.seconds:.0f}s",
            flush=True,
        )
        if not result.ok:
            print(json.dumps(result.as_dict(), indent=2), flush=True)
        if out is not None:  # after every run, so an interrupted long run keeps its figures
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps({"summary": summarize(results), "runs": [r.as_dict() for r in results]}, indent=2)
            )
    return results


def summarize(results: list[RunResult]) -> dict[str, Any]:
    faults: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
    return {
        "runs": len(results),
        "failed_runs": [r.seed for r in results if not r.ok],
        "events_written": sum(r.written for r in results),
        "poison_events": sum(r.poison for r in results),
        "invocations": sum(r.invocations for r in results),
        "faults": dict(sorted(faults.items())),
        "lost": sum(len(r.verdict.lost) for r in results),
        "order_violations": sum(len(r.verdict.order_violations) for r in results),
        "duplicates": sum(r.verdict.duplicates for r in results),
        "unequal_copies": sum(len(r.verdict.unequal_copies) for r in results),
        "dead": sum(r.verdict.dead for r in results),
        "dead_without_letter": sum(len(r.verdict.dead_without_letter) for r in results),
        "crashed_invocations": sum(r.crashed for r in results),
        "starved_aggregates": sum(r.starved for r in results),
        "peak_rss_mb": round(max((r.peak_rss_mb for r in results), default=0.0), 1),
        "seconds": round(sum(r.seconds for r in results)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0, help="chaos per run (the drain comes after)")
    parser.add_argument("--out", default=str(support.ROOT / "bench" / "out" / "faults.json"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    results = run_many(args.runs, args.seed, args.seconds, args.verbose, out=Path(args.out))
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    return 0 if not summary["failed_runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
