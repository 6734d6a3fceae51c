"""Helpers for tests on the real local stack (MariaDB, Kafka, moto)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pymysql

from outbox_relay.kafka_tools import ConsumedRecord, read_topics

ROOT = Path(__file__).resolve().parents[1]
LOCAL_STACK = ROOT / "scripts" / "local-stack"
MIGRATIONS = ROOT / "infra" / "migrations"
DB_HOST, DB_PORT, DB_USER, DB_PASSWORD = "127.0.0.1", 3306, "relay", "relay"
KAFKA = "127.0.0.1:9092"
SLOW_KAFKA_UPSTREAM = ("127.0.0.1", 9094)  # the broker's SLOW listener, advertised as :9095
SLOW_KAFKA_PROXY_PORT = 9095
MOTO = "http://127.0.0.1:5000"
# The local stack's own CA for TLS to MariaDB (scripts/local-stack, mariadb_tls).
DB_CA = str(
    Path(os.environ.get("OUTBOX_MARIADB_DIR", "/var/lib/outbox-relay/mariadb")).parent / "tls" / "ca.pem"
)


def stack(*args: str) -> None:
    subprocess.run([str(LOCAL_STACK), *args], check=True, stdout=subprocess.DEVNULL)


def connect(database: str | None = None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=DB_HOST,
        port=DB_PORT,
        user=DB_USER,
        password=DB_PASSWORD,
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )


@dataclass
class Event:
    """A row to write to the outbox (the writer's four columns, plus optional ones)."""

    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: bytes
    seq: int | None = None
    topic: str | None = None
    headers: str | None = None


def backlog(
    events: int,
    aggregates: int,
    aggregate_type: str = "order",
    size: int = 200,
    rng: random.Random | None = None,
) -> list[Event]:
    """``events`` rows over ``aggregates`` aggregates, interleaved, each aggregate numbered 1..n."""
    rng = rng or random.Random(7)
    counters: dict[str, int] = defaultdict(int)
    out = []
    for _ in range(events):
        agg = f"{aggregate_type}-{rng.randrange(aggregates)}"
        counters[agg] += 1
        n = counters[agg]
        body = {"aggregate": agg, "n": n, "pad": "x" * max(0, size - 60)}
        out.append(Event(aggregate_type, agg, "Changed", json.dumps(body).encode(), seq=n))
    return out


@dataclass
class Database:
    name: str
    table: str = "outbox"

    def conn(self) -> pymysql.connections.Connection[Any]:
        return connect(self.name)

    def insert(self, events: Sequence[Event], chunk: int = 1000) -> None:
        sql = (
            f"INSERT INTO `{self.table}`"
            " (aggregate_type, aggregate_id, event_type, payload, seq, topic, headers)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        with self.conn() as conn, conn.cursor() as cur:
            for i in range(0, len(events), chunk):
                cur.executemany(
                    sql,
                    [
                        (e.aggregate_type, e.aggregate_id, e.event_type, e.payload, e.seq, e.topic, e.headers)
                        for e in events[i : i + chunk]
                    ],
                )

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.conn() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def status_counts(self) -> dict[str, int]:
        return {
            s: int(n) for s, n in self.query(f"SELECT status, COUNT(*) FROM `{self.table}` GROUP BY status")
        }

    def rows(self) -> list[dict[str, Any]]:
        """Every row; text read as bytes and decoded as the relay does (a row may hold bytes that
        are not text of its column's character set: those become U+DC80..U+DCFF)."""
        cols = (
            "id, CAST(event_id AS BINARY), CAST(aggregate_id AS BINARY), status, attempts,"
            " CAST(last_error AS BINARY), available_at > UTC_TIMESTAMP(6)"
        )
        names = ("id", "event_id", "aggregate_id", "status", "attempts", "last_error", "backing_off")
        return [
            {
                k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
                for k, v in zip(names, r, strict=True)
            }
            for r in self.query(f"SELECT {cols} FROM `{self.table}` ORDER BY id")
        ]

    def install_audit(self) -> None:
        """Record every status change (by whom is not known to SQL; the count is what matters)."""
        with self.conn() as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE status_audit (id BIGINT UNSIGNED, old_status VARCHAR(16),"
                " new_status VARCHAR(16), at DATETIME(6))"
            )
            cur.execute(
                f"CREATE TRIGGER audit_status AFTER UPDATE ON `{self.table}` FOR EACH ROW BEGIN"
                " IF OLD.status <> NEW.status THEN INSERT INTO status_audit VALUES"
                " (OLD.id, OLD.status, NEW.status, UTC_TIMESTAMP(6)); END IF; END"
            )


@dataclass
class Topics:
    prefix: str
    created: set[str] = field(default_factory=set)

    @property
    def template(self) -> str:
        return self.prefix + ".{aggregate_type}"

    def name(self, aggregate_type: str) -> str:
        return f"{self.prefix}.{aggregate_type}"

    def read(self, *aggregate_types: str) -> list[ConsumedRecord]:
        names = [self.name(t) for t in aggregate_types] if aggregate_types else sorted(self.created)
        return read_topics([KAFKA], names)


@dataclass
class Queue:
    url: str

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.bodies()]

    def bodies(self) -> list[str]:
        """Every message's body as sent, each read once (deleted)."""
        sqs = boto3.client("sqs", endpoint_url=MOTO)
        out: list[str] = []
        while True:
            got = sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            batch = got.get("Messages", [])
            if not batch:
                return out
            for m in batch:
                out.append(m["Body"])
                sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])


def new_queue() -> Queue:
    sqs = boto3.client("sqs", endpoint_url=MOTO)
    return Queue(sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:12]}")["QueueUrl"])


# --- checking what reached Kafka -----------------------------------------------------------


@dataclass
class Delivered:
    """Kafka's view of a run: copies per event id and the last-copy order per aggregate."""

    records: list[ConsumedRecord]

    def copies(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for r in self.records:
            counts[r.headers["id"].decode()] += 1
        return counts

    def last_copy_sequences(self) -> dict[tuple[str, bytes | None], list[int]]:
        """Per (topic, key): the ``seq`` headers in log order, keeping only each event's last copy."""
        last: dict[str, tuple[int, ConsumedRecord]] = {}
        for i, r in enumerate(self.records):
            last[r.headers["id"].decode()] = (i, r)
        per_key: dict[tuple[str, bytes | None], list[tuple[int, int]]] = defaultdict(list)
        for _, r in last.values():
            per_key[(r.topic, r.key)].append((r.partition * 10**12 + r.offset, int(r.headers["seq"])))
        return {k: [seq for _, seq in sorted(v)] for k, v in per_key.items()}

    def order_violations(self) -> int:
        return sum(
            1 for seqs in self.last_copy_sequences().values() for a, b in itertools.pairwise(seqs) if b <= a
        )


@dataclass(frozen=True)
class ConsumerRecord:
    """What the consumer helper reads of a kafka-python ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes | None]]


# --- a TCP proxy in front of a dependency that is slow, or hangs -----------------------------


class DelayProxy:
    """Forwards 127.0.0.1:``port`` (0: a free port; ``url`` names it) to ``upstream`` (default: the
    broker's SLOW listener), delaying every chunk upstream sends back by ``delay`` seconds; with
    ``stall``, new connections are accepted and read but never answered.  Both change while
    running; ``accepted`` counts connections."""

    def __init__(self, port: int = SLOW_KAFKA_PROXY_PORT, upstream: tuple[str, int] = SLOW_KAFKA_UPSTREAM):
        self.delay = 0.0
        self.stall = False
        self.accepted = 0
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            self._sockets.append(client)
            if self.stall:
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            upstream = socket.create_connection(self.upstream)
            self._sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if delayed and self.delay:
                    time.sleep(self.delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        # Shut the listener down before closing it: a close alone leaves the thread in accept()
        # holding the port (LISTEN) until a connection arrives, and the next proxy on that port
        # fails with "Address already in use".
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._acceptor.join(timeout=5)
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


def handler_in_process(env: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """Run the Lambda handler as a separate invocation would: in this (spawned) process, with
    its own connections.  Used through multiprocessing."""
    os.environ.update(env)
    from outbox_relay.cli import LocalContext
    from outbox_relay.handler import lambda_handler

    result: dict[str, Any] = lambda_handler({}, LocalContext(timeout))
    return result


_CHILD = """
import contextlib, io, json, os, sys
os.environ.update(json.loads(sys.argv[1]))
from outbox_relay.cli import LocalContext
from outbox_relay.handler import lambda_handler
with contextlib.redirect_stdout(io.StringIO()):
    summary = lambda_handler({}, LocalContext(float(sys.argv[2])))
# VmHWM: this process's own peak resident memory (ru_maxrss would include the parent's at fork).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"summary": summary, "peak_rss_mb": hwm / 1024}))
"""


def handler_in_child(env: dict[str, str], timeout: float = 60.0) -> tuple[dict[str, Any], float]:
    """One invocation of the Lambda handler in a fresh interpreter, as a cold Lambda runs it:
    its summary and the process's peak resident memory in MB."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(env), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=True,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out["summary"], float(out["peak_rss_mb"])


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
