"""Relay throughput and latency, side by side with the naive loop and the machine's limits.

    make bench                         # 10k and 100k events of 1 KB, 1/16/64 KB payloads, the
                                       # batch-size sweep, latency, profile
    .venv/bin/python bench/relay_bench.py --sizes 10000 --no-sweep --no-latency   # quicker
    .venv/bin/python bench/relay_bench.py --payloads-only   # only the payload sizes (1, 16, 64 KB)

On the local MariaDB + Kafka (scripts/local-stack), in one run:

* naive   the seed's algorithm: select PENDING rows; for each: send to Kafka and wait, then
          UPDATE it to PUBLISHED and commit (row by row);
* relay   one invocation of the Lambda handler (decorators and all), in its own process, draining
          the same backlog; its peak RSS is the memory figure;
* kafka   the raw kafka-python producer rate for the same records (no database), with the relay's
          producer settings;
* db      the raw database rate for lease + read + fenced finalize of the same rows (the relay's
          own store, no Kafka: a publisher that acknowledges at once);
* latency commit -> readable in Kafka for a steady trickle of writes with the poll window on.
* payloads  relay, kafka and db again for larger payloads (``--payloads KB:EVENTS,...``; default
          1 KB x 10,000, 16 KB x 10,000, 64 KB x 5,000): events/s, MiB/s, CPU per event and the
          relay's peak RSS under the per-pass byte budget (OUTBOX_MAX_BATCH_BYTES), and the relay
          once more with the budget at its largest (256 MiB, so the 2000-row batch binds first),
          to show what the budget holds back.  No naive loop here.

Prints a table, writes bench/out/results.json and bench/out/throughput_vs_batch.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pymysql
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from outbox_relay.config import RelaySettings, load_config
from outbox_relay.db import connector
from outbox_relay.kafka_tools import ensure_topics
from outbox_relay.migrate import apply, discover
from outbox_relay.model import Delivery, SendResult
from outbox_relay.ports import NullMetrics, Settled, SystemClock
from outbox_relay.publisher_kafka import producer_config
from outbox_relay.relay import Relay
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
KAFKA = "127.0.0.1:9092"
AGGREGATES = 1000
PAYLOAD_BYTES = 1024
PARTITIONS = 6
KB = 1024
MIB = 1024 * 1024
# --payloads default: (KB, events); 1 KB again so the payload table has its baseline in the same run.
PAYLOADS = "1:10000,16:10000,64:5000"
# The largest OUTBOX_MAX_BATCH_BYTES the relay accepts: with 2000-row batches of at most 64 KB
# (128 MiB) it never binds, so the pass is bounded by rows alone.
UNBOUNDED_BATCH_BYTES = 256 * MIB


# --- set-up ----------------------------------------------------------------------------------


def connect(database: str | None = None, autocommit: bool = True) -> Any:
    # Plain TCP, like the relay with OUTBOX_DB_TLS=off (PyMySQL would otherwise use TLS when offered).
    return pymysql.connect(
        host="127.0.0.1",
        port=3306,
        user="relay",
        password="relay",  # noqa: S106 - the local stack's user
        database=database,
        autocommit=autocommit,
        charset="utf8mb4",
        ssl_disabled=True,
    )


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    with connect(name) as conn:
        apply(conn, OutboxSql(), discover(ROOT / "infra" / "migrations"), lambda _: None)
    try:
        yield name
    finally:
        with connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def payload(n: int, aggregate: str, size: int = PAYLOAD_BYTES) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    head = json.dumps({"aggregate": aggregate, "n": n, "pad": ""})
    return json.dumps({"aggregate": aggregate, "n": n, "pad": "x" * (size - len(head))}).encode()


def fill(database: str, events: int, size: int = PAYLOAD_BYTES) -> None:
    """``events`` PENDING rows of ``size`` bytes over AGGREGATES aggregates (the writers' four
    columns).  Built and inserted a chunk at a time (at most 2000 rows, about 8 MiB)."""
    rng = random.Random(events)
    counters: dict[str, int] = {}
    chunk = max(1, min(2000, 8 * MIB // size))
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE TABLE outbox")
        cur.execute("UPDATE outbox_shard SET lease_token = NULL, lease_until = '1970-01-01'")
        for i in range(0, events, chunk):
            rows = []
            for _ in range(min(chunk, events - i)):
                aggregate = f"order-{rng.randrange(AGGREGATES)}"
                counters[aggregate] = counters.get(aggregate, 0) + 1
                rows.append(
                    ("order", aggregate, "OrderChanged", payload(counters[aggregate], aggregate, size))
                )
            cur.executemany(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES (%s, %s, %s, %s)",
                rows,
            )


def pending(database: str) -> int:
    with connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM outbox WHERE status = 'PENDING'")
        return int((cur.fetchone() or (0,))[0])


def new_topic() -> str:

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    ensure_topics([KAFKA], [f"{prefix}.order"], partitions=PARTITIONS)
    return prefix


def drop_topic(prefix: str) -> None:
    """Delete a bench topic (the payload rows write hundreds of MB to the broker's disk)."""
    admin = KafkaAdminClient(bootstrap_servers=[KAFKA], client_id="outbox-relay-bench")
    try:
        admin.delete_topics([f"{prefix}.order"])
    finally:
        admin.close()


def relay_env(database: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "OUTBOX_DB_HOST": "127.0.0.1",
        "OUTBOX_DB_PORT": "3306",
        "OUTBOX_DB_NAME": database,
        "OUTBOX_DB_USER": "relay",
        "OUTBOX_DB_PASSWORD": "relay",
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "OUTBOX_TOPIC_TEMPLATE": prefix + ".{aggregate_type}",
        "DLQ_QUEUE_URL": "http://127.0.0.1:5000/123456789012/outbox-relay-dlq",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_METRICS_DISABLED": "true",
        **extra,
    }


def contract_headers(event_id: str, event_type: str, aggregate_type: str) -> list[tuple[str, bytes]]:
    """The message contract's headers, for the loops that do not go through the relay."""
    return [
        ("id", event_id.encode()),
        ("event_type", event_type.encode()),
        ("aggregate_type", aggregate_type.encode()),
    ]


# --- the four measurements --------------------------------------------------------------------


def naive(database: str, prefix: str) -> float:
    """The seed's loop; returns seconds to publish everything."""

    producer = KafkaProducer(bootstrap_servers=[KAFKA])
    conn = connect(database, autocommit=False)
    started = time.perf_counter()
    with conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT id, event_id, aggregate_type, aggregate_id, event_type, payload FROM outbox"
                " WHERE status = 'PENDING' ORDER BY id LIMIT 100"
            )
            rows = cur.fetchall()
            conn.commit()
            if not rows:
                break
            for row_id, event_id, aggregate_type, aggregate_id, event_type, body in rows:
                producer.send(
                    f"{prefix}.{aggregate_type}",
                    key=aggregate_id.encode(),
                    value=body,
                    headers=contract_headers(event_id, event_type, aggregate_type),
                ).get(timeout=30)
                cur.execute(
                    "UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6) WHERE id = %s",
                    (row_id,),
                )
                conn.commit()
    elapsed = time.perf_counter() - started
    producer.close()
    conn.close()
    return elapsed


RELAY_CHILD = """
import json, os, sys, time, contextlib, io
sys.path.insert(0, sys.argv[2])
os.environ.update(json.loads(sys.argv[1]))
from outbox_relay.cli import LocalContext
from outbox_relay.handler import lambda_handler
with contextlib.redirect_stdout(io.StringIO()):
    started, cpu = time.perf_counter(), time.process_time()
    summary = lambda_handler({}, LocalContext(900))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
# VmHWM: this process's own peak resident memory (ru_maxrss would include the parent's at fork).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "summary": summary, "max_rss_mb": hwm / 1024}))
"""


def relay(database: str, prefix: str, **extra: str) -> dict[str, Any]:
    """One handler invocation in a fresh process (as a cold Lambda would be)."""
    env = relay_env(database, prefix, **extra)
    result = subprocess.run(
        [sys.executable, "-c", RELAY_CHILD, json.dumps(env), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def kafka_limit(database: str, prefix: str) -> tuple[float, float]:
    """Raw producer: the same records, already in memory, sent and flushed once.  Returns wall
    and CPU seconds (this process, all threads)."""

    with connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT event_id, aggregate_type, aggregate_id, event_type, payload FROM outbox ORDER BY id"
        )
        rows = cur.fetchall()
    config = load_config(relay_env(database, prefix))
    producer = KafkaProducer(**producer_config(config.kafka, bootstrap_timeout_ms=10_000))
    topic = f"{prefix}.order"
    started, cpu = time.perf_counter(), time.process_time()
    for event_id, aggregate_type, aggregate_id, event_type, body in rows:
        producer.send(
            topic,
            key=aggregate_id.encode(),
            value=body,
            headers=contract_headers(event_id, event_type, aggregate_type),
        )
    producer.flush()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    producer.close()
    return elapsed, cpu


class InstantPublisher:
    """Acknowledges every message at once: what is left is the database work."""

    in_doubt = False

    def new_run(self) -> None:
        pass

    def send(self, messages: Sequence[Any], deadline: float) -> Any:
        return Settled([SendResult(Delivery.DELIVERED)] * len(messages))

    def close(self) -> None:
        pass


def db_limit(database: str, prefix: str) -> tuple[float, float]:
    """The relay's own lease/read/finalize against the database, with Kafka taken out.  Returns
    wall and CPU seconds (this process, all threads)."""

    core, stores = in_process_relay(database, prefix, InstantPublisher())
    started, cpu = time.perf_counter(), time.process_time()
    summary = core.run(time.monotonic() + 900)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    for store in stores:
        store.close()
    assert summary.pending == 0, summary
    return elapsed, cpu


def in_process_relay(database: str, prefix: str, publisher: Any) -> tuple[Relay, list[MySQLOutboxStore]]:
    """The relay core with the real store, in this process; two connections, as the relay has
    (the finalize of a pass overlaps the next read)."""
    config = load_config(relay_env(database, prefix))
    store = MySQLOutboxStore(connector(config.database), OutboxSql())
    finalize_store = MySQLOutboxStore(connector(config.database), OutboxSql())
    core = Relay(
        store,
        publisher,
        _NoDeadLetters(),
        NullMetrics(),
        SystemClock(),
        config.relay,
        "bench",
        finalize_store=finalize_store,
    )
    return core, [store, finalize_store]


class _NoDeadLetters:
    def send(self, letters: Sequence[Any], acknowledged: Any = None) -> list[str | None]:
        raise AssertionError("the benchmark data has no poison events")


def latency(database: str, prefix: str, events: int = 2000, rate: float = 200.0) -> dict[str, float]:
    """Poll window on; a writer commits ``rate`` events/s; a consumer notes when each is readable."""

    topic = f"{prefix}.order"
    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    stop = threading.Event()
    ready = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(bootstrap_servers=[KAFKA], enable_auto_commit=False, fetch_max_wait_ms=5)
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)
        for p in parts:
            consumer.position(p)
        ready.set()
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=10).values():
                now = time.time()
                for r in records:
                    received.setdefault(dict(r.headers)["id"].decode(), now)
        consumer.close()

    reader = threading.Thread(target=consume)
    reader.start()
    ready.wait()
    window = events / rate + 3
    runner = threading.Thread(
        target=relay,
        args=(database, prefix),
        kwargs={"OUTBOX_POLL_WINDOW_SECONDS": str(window), "OUTBOX_POLL_INTERVAL_MS": "20"},
    )
    runner.start()
    time.sleep(1.5)  # the relay process is up and polling
    conn = connect(database)
    with conn.cursor() as cur:
        body = payload(0, "order-latency")
        next_at = time.perf_counter()
        for n in range(events):
            event_id = str(uuid.uuid4())
            cur.execute(
                "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload)"
                " VALUES (%s, 'order', %s, 'Tick', %s)",
                (event_id, f"order-{n % 50}", body),
            )
            committed[event_id] = time.time()
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
    conn.close()
    deadline = time.monotonic() + 20
    while len(received) < events and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()
    runner.join()
    delays = sorted(received[e] - t for e, t in committed.items() if e in received)
    return {
        "events": events,
        "rate_per_s": rate,
        "received": len(delays),
        "p50_ms": statistics.median(delays) * 1000,
        "p99_ms": delays[max(0, int(len(delays) * 0.99) - 1)] * 1000,
        "max_ms": delays[-1] * 1000,
    }


def profile(database: str, events: int) -> dict[str, Any]:
    """Where one relay run's main thread spends its time, in-process with the real adapters.

    Each phase is timed around the call the core makes (read, select/encode, send, waiting for
    the flush, ...); the rest of the run is "other".  A second, cProfiled run of the same backlog
    names the functions behind the phases (bench/out/profile.txt)."""
    import cProfile
    import io
    import pstats

    from outbox_relay import ordering, publisher_kafka

    def core(prefix: str) -> tuple[Relay, list[MySQLOutboxStore], Any]:
        publisher = publisher_kafka.KafkaPublisher(load_config(relay_env(database, prefix)).kafka)
        relay_, stores = in_process_relay(database, prefix, publisher)
        return relay_, stores, publisher

    phases: dict[str, float] = {}

    def timed(owner: Any, name: str, label: str) -> Any:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - started

        return mock.patch.object(owner, name, wrapper)

    fill(database, events)
    relay_, stores, publisher = core(new_topic())
    with contextlib.ExitStack() as patches:
        for owner, name, label in (
            (stores[0], "read_heads", "read rows (PyMySQL)"),
            (ordering, "select", "select + encode (relay)"),
            (publisher, "send", "hand records to kafka-python (send)"),
            (publisher_kafka._Batch, "wait", "wait for Kafka's acks (flush)"),
            (relay_, "_settle", "settle (relay)"),
            (relay_, "_join", "wait for the finalize"),
        ):
            patches.enter_context(timed(owner, name, label))
        started = time.perf_counter()
        summary = relay_.run(time.monotonic() + 900)
        total = time.perf_counter() - started
    assert summary.published == events, summary
    publisher.close()
    for store in stores:
        store.close()
    phases["other"] = total - sum(phases.values())

    fill(database, events)
    relay_, stores, publisher = core(new_topic())
    profiler = cProfile.Profile()
    profiler.enable()
    relay_.run(time.monotonic() + 900)
    profiler.disable()
    publisher.close()
    for store in stores:
        store.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
    (OUT / "profile.txt").write_text(text.getvalue())
    return {"events": events, "seconds": total, "phases_s": phases}


# --- the run ---------------------------------------------------------------------------------


def measure(database: str, events: int, batch_size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"events": events, "batch_size": batch_size}
    prefix = new_topic()
    fill(database, events)
    row["naive_s"] = naive(database, prefix)
    assert pending(database) == 0
    fill(database, events)
    run = relay(database, prefix, OUTBOX_BATCH_SIZE=str(batch_size))
    assert run["summary"]["ok"] and run["summary"]["published"] == events, run["summary"]
    row["relay_s"], row["relay_max_rss_mb"] = run["seconds"], run["max_rss_mb"]
    row["kafka_s"], kafka_cpu = kafka_limit(database, prefix)
    fill(database, events)
    row["db_s"], db_cpu = db_limit(database, prefix)
    # Python CPU per event (the process, all threads): the relay does the work of both limits.
    row["relay_cpu_us"] = run["cpu_seconds"] / events * 1e6
    row["kafka_cpu_us"] = kafka_cpu / events * 1e6
    row["db_cpu_us"] = db_cpu / events * 1e6
    for key in ("naive", "relay", "kafka", "db"):
        row[f"{key}_per_s"] = events / row[f"{key}_s"]
    row["relay_vs_naive"] = row["relay_per_s"] / row["naive_per_s"]
    row["relay_vs_slower_limit"] = row["relay_per_s"] / min(row["kafka_per_s"], row["db_per_s"])
    return row


def measure_payload(
    database: str, kb: int, events: int, batch_size: int, contrast: bool = True
) -> dict[str, Any]:
    """Relay, raw Kafka and raw DB for ``events`` payloads of ``kb`` KiB; the relay at the
    default byte budget and (``contrast``) with the budget out of the way."""
    size = kb * KB
    row: dict[str, Any] = {
        "payload_kb": kb,
        "payload_bytes": size,
        "events": events,
        "batch_size": batch_size,
    }
    prefix = new_topic()
    try:
        fill(database, events, size)
        run = relay(database, prefix, OUTBOX_BATCH_SIZE=str(batch_size))
        assert run["summary"]["ok"] and run["summary"]["published"] == events, run["summary"]
        row["relay_s"], row["relay_max_rss_mb"] = run["seconds"], run["max_rss_mb"]
        row["relay_passes"] = run["summary"]["passes"]
        row["relay_cpu_us"] = run["cpu_seconds"] / events * 1e6
        row["kafka_s"], kafka_cpu = kafka_limit(database, prefix)
        row["kafka_cpu_us"] = kafka_cpu / events * 1e6
    finally:
        drop_topic(prefix)
    fill(database, events, size)
    row["db_s"], db_cpu = db_limit(database, prefix)
    row["db_cpu_us"] = db_cpu / events * 1e6
    for key in ("relay", "kafka", "db"):
        row[f"{key}_per_s"] = events / row[f"{key}_s"]
        row[f"{key}_mib_per_s"] = row[f"{key}_per_s"] * size / MIB
    row["relay_vs_slower_limit"] = row["relay_per_s"] / min(row["kafka_per_s"], row["db_per_s"])
    if contrast:
        prefix = new_topic()
        try:
            fill(database, events, size)
            run = relay(
                database,
                prefix,
                OUTBOX_BATCH_SIZE=str(batch_size),
                OUTBOX_MAX_BATCH_BYTES=str(UNBOUNDED_BATCH_BYTES),
            )
        finally:
            drop_topic(prefix)
        assert run["summary"]["ok"] and run["summary"]["published"] == events, run["summary"]
        row["unbounded_per_s"] = events / run["seconds"]
        row["unbounded_max_rss_mb"] = run["max_rss_mb"]
        row["unbounded_passes"] = run["summary"]["passes"]
        row["unbounded_cpu_us"] = run["cpu_seconds"] / events * 1e6
    return row


def sweep(database: str, events: int, batch_sizes: Sequence[int]) -> list[dict[str, float]]:
    points = []
    for batch_size in batch_sizes:
        prefix = new_topic()
        fill(database, events)
        run = relay(database, prefix, OUTBOX_BATCH_SIZE=str(batch_size))
        assert run["summary"]["published"] == events
        points.append(
            {"batch_size": batch_size, "per_s": events / run["seconds"], "max_rss_mb": run["max_rss_mb"]}
        )
        print(
            f"  batch {batch_size:>5}: {points[-1]['per_s']:>8.0f} events/s, peak RSS {run['max_rss_mb']:.0f} MB"
        )
    return points


def chart(points: list[dict[str, float]], limits: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [p["batch_size"] for p in points],
        [p["per_s"] for p in points],
        marker="o",
        label="relay (one invocation)",
    )
    for (name, value), color in zip(limits.items(), ("tab:orange", "tab:green"), strict=False):
        ax.axhline(value, linestyle="--", linewidth=1, color=color, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("OUTBOX_BATCH_SIZE (rows per pass)")
    ax.set_ylabel("events/s (1 KB)")
    ax.set_title("Relay throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def payload_rows(text: str) -> list[tuple[int, int]]:
    """``"16:10000,64:5000"`` -> [(16, 10000), (64, 5000)]: payload KiB and events."""
    pairs = []
    for item in text.split(","):
        if item.strip():
            kb, events = item.split(":")
            pairs.append((int(kb), int(events)))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=ints, default=[10_000, 100_000], help="events per 1 KB row")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the relay's default")
    parser.add_argument(
        "--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[100, 250, 500, 1000, 2000, 5000]
    )
    parser.add_argument("--sweep-events", type=int, default=20_000)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--profile-events", type=int, default=20_000, help="0: no profile")
    parser.add_argument(
        "--payloads",
        type=payload_rows,
        default=payload_rows(PAYLOADS),
        help=f"payload rows as KB:EVENTS,... (default {PAYLOADS}; '' for none)",
    )
    parser.add_argument(
        "--no-budget-contrast",
        action="store_true",
        help="payload rows: skip the second relay run with OUTBOX_MAX_BATCH_BYTES at its largest",
    )
    parser.add_argument(
        "--payloads-only",
        action="store_true",
        help="only the payload rows: no 1 KB rows, latency, profile or sweep",
    )
    parser.add_argument("--replot", action="store_true", help="redraw the chart from bench/out/results.json")
    args = parser.parse_args()
    if args.payloads_only:
        args.sizes, args.no_latency, args.profile_events, args.no_sweep = [], True, 0, True
    if args.replot:
        saved = json.loads((OUT / "results.json").read_text())
        last = saved["rows"][-1]
        chart(
            saved["sweep"],
            {"raw Kafka producer": last["kafka_per_s"], "raw database": last["db_per_s"]},
            OUT / "throughput_vs_batch.png",
        )
        return 0

    batch_size = args.batch_size or RelaySettings().batch_size
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "payload_bytes": PAYLOAD_BYTES,
        "aggregates": AGGREGATES,
        "partitions": PARTITIONS,
        "rows": [],
    }
    with scratch_database() as database:
        for events in args.sizes:
            print(f"measuring {events} events (batch {batch_size})...", flush=True)
            results["rows"].append(measure(database, events, batch_size))
        if args.payloads:
            results["payloads"] = []
        for kb, events in args.payloads:
            print(f"measuring {events} events of {kb} KB (batch {batch_size})...", flush=True)
            results["payloads"].append(
                measure_payload(database, kb, events, batch_size, contrast=not args.no_budget_contrast)
            )
        if not args.no_latency:
            print("measuring commit -> Kafka latency with the poll window...", flush=True)
            with connect(database) as conn, conn.cursor() as cur:
                cur.execute("TRUNCATE TABLE outbox")
            results["latency"] = latency(database, new_topic())
        if args.profile_events:
            print(f"profiling one run of {args.profile_events} events...", flush=True)
            results["profile"] = profile(database, args.profile_events)
        if not args.no_sweep:
            print(f"sweeping batch sizes at {args.sweep_events} events...", flush=True)
            results["sweep"] = sweep(database, args.sweep_events, args.sweep)
    report(results)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    if "sweep" in results and results["rows"]:
        last = results["rows"][-1]
        chart(
            results["sweep"],
            {"raw Kafka producer": last["kafka_per_s"], "raw database": last["db_per_s"]},
            OUT / "throughput_vs_batch.png",
        )
        print(f"chart: {OUT / 'throughput_vs_batch.png'}")
    return 0


def report(results: dict[str, Any]) -> None:
    if results["rows"]:
        report_rows(results["rows"])
    if results.get("payloads"):
        report_payloads(results["payloads"])
    if "latency" in results:
        lat = results["latency"]
        print(
            f"\npoll window, {lat['events']} events at {lat['rate_per_s']:.0f}/s: commit -> readable in Kafka "
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms "
            f"({lat['received']} received)"
        )
    if "profile" in results:
        prof = results["profile"]
        print(f"\nmain thread of one in-process run, {prof['events']} events in {prof['seconds']:.2f} s:")
        for phase, seconds in sorted(prof["phases_s"].items(), key=lambda kv: -kv[1]):
            share = seconds / prof["seconds"]
            print(
                f"  {phase:<40} {seconds:6.2f} s  {share:6.1%}  {seconds / prof['events'] * 1e6:5.1f} us/event"
            )
        print(f"  (cProfile of a second run: {OUT / 'profile.txt'})")


def report_rows(rows: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'events':>7}  {'naive/s':>8}  {'relay/s':>8}  {'kafka/s':>8}  {'db/s':>8}  "
        f"{'relay/naive':>11}  {'relay/min(limits)':>17}  {'relay RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['events']:>7}  {r['naive_per_s']:>8.0f}  {r['relay_per_s']:>8.0f}  {r['kafka_per_s']:>8.0f}  "
            f"{r['db_per_s']:>8.0f}  {r['relay_vs_naive']:>10.1f}x  {r['relay_vs_slower_limit']:>16.0%}  "
            f"{r['relay_max_rss_mb']:>12.0f}"
        )
    cpu_table(rows, "events", lambda r: f"{r['events']:>7}")


def cpu_table(rows: list[dict[str, Any]], label: str, first: Callable[[dict[str, Any]], str]) -> None:
    """Python CPU per event of the relay beside the raw limits' (one row per measured size)."""
    print(f"\n{label:>7}  {'Python CPU per event: relay':>28}  {'kafka':>9}  {'db':>9}  {'kafka + db':>10}")
    for r in rows:
        both = r["kafka_cpu_us"] + r["db_cpu_us"]
        print(
            f"{first(r)}  {r['relay_cpu_us']:>25.1f} us  {r['kafka_cpu_us']:>6.1f} us  "
            f"{r['db_cpu_us']:>6.1f} us  {both:>7.1f} us"
        )


def report_payloads(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'payload':>7}  {'events':>6}  {'relay/s':>8}  {'MiB/s':>6}  {'kafka/s':>8}  {'MiB/s':>6}  "
        f"{'db/s':>8}  {'MiB/s':>6}  {'relay/min(limits)':>17}  {'passes':>6}  {'relay RSS MB':>12}"
    )
    for r in rows:
        print(
            f"{r['payload_kb']:>4} KB  {r['events']:>6}  {r['relay_per_s']:>8.0f}  {r['relay_mib_per_s']:>6.1f}  "
            f"{r['kafka_per_s']:>8.0f}  {r['kafka_mib_per_s']:>6.1f}  {r['db_per_s']:>8.0f}  "
            f"{r['db_mib_per_s']:>6.1f}  {r['relay_vs_slower_limit']:>16.0%}  {r['relay_passes']:>6}  "
            f"{r['relay_max_rss_mb']:>12.0f}"
        )
    cpu_table(rows, "payload", lambda r: f"{r['payload_kb']:>4} KB")
    if any("unbounded_max_rss_mb" in r for r in rows):
        print(
            f"\nbyte budget out of the way (OUTBOX_MAX_BATCH_BYTES={UNBOUNDED_BATCH_BYTES // MIB} MiB: "
            "rows bound the pass):"
        )
        for r in rows:
            if "unbounded_max_rss_mb" in r:
                print(
                    f"  {r['payload_kb']:>4} KB: {r['unbounded_per_s']:>7.0f} events/s, "
                    f"{r['unbounded_cpu_us']:.1f} us/event, {r['unbounded_passes']} passes, peak RSS "
                    f"{r['unbounded_max_rss_mb']:.0f} MB (budgeted: {r['relay_max_rss_mb']:.0f} MB)"
                )


if __name__ == "__main__":
    sys.exit(main())
