"""Relay CPU per event with X-Ray tracing as deployed, against the same run with tracing off.

    make bench-tracing
    .venv/bin/python bench/tracing_bench.py --events 20000 --pairs 5   # the defaults

The deployed function has ``Tracing: Active`` and the handler a Powertools
``Tracer(patch_modules=("botocore",))``.  Outside Lambda, Powertools switches tracing off (no
``LAMBDA_TASK_ROOT``), so ``make bench`` measures the relay untraced.  Here the handler runs in
its own process (as ``relay_bench.py``'s relay step) with the environment the Lambda runtime
gives it, in two modes that differ in one variable:

* traced  ``POWERTOOLS_TRACE_DISABLED=false``: ``LAMBDA_TASK_ROOT`` makes the X-Ray SDK take its
          Lambda context (``aws_xray_sdk/core/lambda_launcher.py``: segments come from
          ``_X_AMZN_TRACE_ID``, subsegments are streamed one by one) and Powertools patch
          botocore; ``_X_AMZN_TRACE_ID`` is a sampled trace header, ``AWS_XRAY_DAEMON_ADDRESS``
          a UDP listener of this process standing in for the X-Ray daemon;
* off     ``POWERTOOLS_TRACE_DISABLED=true``, all else the same.

Each run drains the same backlog (``events`` rows of 1 KB, plus one row that is not JSON and is
dead-lettered to a scratch SQS queue on moto) and reads the database password from the moto
secret ``outbox-relay/local/db``, so that both botocore calls a run can make (GetSecretValue,
SendMessageBatch) happen.  The modes alternate, ``pairs`` times each.  Timed:
``time.process_time()`` of the relay's process (all its threads, user + system) around the
handler call only; the imports, where botocore is patched, are reported apart as init CPU.  The
listener runs in this process: its CPU is not counted, nor is the real daemon's.

The run fails unless, in every run, the SDK is in its Lambda context with botocore alone patched
(traced) or is disabled (off); every traced run delivered trace documents, all with its trace id;
no untraced run delivered any; and no document records SQL.  Writes bench/out/tracing.json.  As in
Lambda, the SDK touches /tmp/.aws-xray/initialized.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from relay_bench import OUT, ROOT, connect, fill, new_topic, relay_env, scratch_database

# The database secret scripts/local-stack seeds in moto (and env.json names): relay / relay.
DB_SECRET = "outbox-relay/local/db"  # noqa: S105 - a secret's name, not a password

CHILD = """
import contextlib, io, json, time
started_init = time.process_time()
from outbox_relay.cli import LocalContext
from outbox_relay.handler import lambda_handler
init_cpu = time.process_time() - started_init
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core import patcher, xray_recorder
probe = {
    "sdk_enabled": global_sdk_config.sdk_enabled(),
    "patched": sorted(patcher._PATCHED_MODULES),
    "context": type(xray_recorder.context).__name__,
}
with contextlib.redirect_stdout(io.StringIO()):
    started, cpu = time.perf_counter(), time.process_time()
    summary = lambda_handler({}, LocalContext(900))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "init_cpu_seconds": init_cpu,
                  "summary": summary, "probe": probe}))
"""


# --- the stand-in X-Ray daemon ----------------------------------------------------------------


@dataclass
class Received:
    """What the listener got during one run."""

    documents: int = 0
    size: int = 0  # bytes of all the datagrams
    subsegments: int = 0  # entities, nested ones included
    calls: Counter[str] = field(default_factory=Counter)  # "<namespace> <name> <operation>"
    trace_ids: set[str] = field(default_factory=set)
    sql: int = 0  # entities carrying a "sql" block (a traced database call)
    malformed: int = 0
    first: list[Any] = field(default_factory=list)  # the first documents, parsed, for the record

    def add(self, datagram: bytes) -> None:
        self.documents += 1
        self.size += len(datagram)
        header, _, body = datagram.partition(b"\n")
        try:
            if json.loads(header) != {"format": "json", "version": 1}:
                raise ValueError(header)
            entity = json.loads(body)
            self._entity(entity)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.malformed += 1
            return
        if len(self.first) < 20:
            self.first.append(entity)

    def _entity(self, entity: dict[str, Any]) -> None:
        self.subsegments += 1
        operation = (entity.get("aws") or {}).get("operation", "")
        self.calls[" ".join(filter(None, (entity.get("namespace", "local"), entity["name"], operation)))] += 1
        if "trace_id" in entity:
            self.trace_ids.add(entity["trace_id"])
        if "sql" in entity:
            self.sql += 1
        for child in entity.get("subsegments", ()):
            self._entity(child)


class DaemonStandIn:
    """A UDP socket on 127.0.0.1 that takes the SDK's segment documents (one per datagram, as the
    SDK's UDPEmitter sends them) and counts them, per run."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = Received()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="xray-daemon-stand-in", daemon=True)

    def __enter__(self) -> DaemonStandIn:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                continue
            with self._lock:
                self.received.add(datagram)

    def take(self) -> Received:
        """What arrived since the last take; call once the sender has exited."""
        time.sleep(0.2)  # the datagrams are in the socket's buffer: let the thread read them
        with self._lock:
            got, self.received = self.received, Received()
        return got


# --- one run -----------------------------------------------------------------------------------


def trace_header() -> tuple[str, str]:
    """A sampled X-Ray trace header as Lambda sets it in ``_X_AMZN_TRACE_ID``, and its root."""
    root = f"1-{int(time.time()):08x}-{secrets.token_hex(12)}"
    return f"Root={root};Parent={secrets.token_hex(8)};Sampled=1", root


MOTO = "http://127.0.0.1:5000"  # scripts/local-stack's moto (AWS_ENDPOINT_URL in relay_env)


@contextlib.contextmanager
def scratch_queue() -> Iterator[str]:
    """A dead-letter queue of this bench's own on moto (the seeded one is the demo's)."""
    import boto3

    sqs = boto3.client(
        "sqs",
        endpoint_url=MOTO,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's test keys
    )
    url = sqs.create_queue(QueueName=f"bench-tracing-{secrets.token_hex(4)}")["QueueUrl"]
    try:
        yield url
    finally:
        sqs.delete_queue(QueueUrl=url)


def lambda_env(
    database: str, prefix: str, queue_url: str, traced: bool, daemon: str, header: str
) -> dict[str, str]:
    """This machine's environment without any AWS, Powertools or Lambda setting of its own, then
    what the Lambda runtime sets, then the relay's configuration (password from the secret)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "POWERTOOLS_", "LAMBDA_", "_X_AMZN", "_AWS"))
    }
    relay = relay_env(database, prefix, OUTBOX_DB_SECRET_ARN=DB_SECRET, DLQ_QUEUE_URL=queue_url)
    del relay["OUTBOX_DB_PASSWORD"]
    return {
        **inherited,
        # boto3: moto's test keys (in relay_env) and nothing from this machine's AWS set-up.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        # The Lambda runtime's.  LAMBDA_TASK_ROOT is what both the X-Ray SDK (lambda_launcher's
        # check_in_lambda) and Powertools (Tracer._is_tracer_disabled) take for "in Lambda".
        "LAMBDA_TASK_ROOT": str(ROOT / "functions" / "relay"),
        "AWS_LAMBDA_FUNCTION_NAME": "outbox-relay-bench",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "AWS_REGION": "us-east-1",
        "AWS_XRAY_DAEMON_ADDRESS": daemon,
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "_X_AMZN_TRACE_ID": header,
        **relay,
        "POWERTOOLS_TRACE_DISABLED": "false" if traced else "true",
    }


def run_once(
    database: str, queue_url: str, events: int, traced: bool, daemon: DaemonStandIn
) -> dict[str, Any]:
    fill(database, events)
    with connect(database) as conn, conn.cursor() as cur:  # the one dead letter of the run
        cur.execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)"
            " VALUES ('order', 'poison', 'OrderChanged', 'not json')"
        )
    header, root = trace_header()
    env = lambda_env(database, new_topic(), queue_url, traced, daemon.address, header)
    daemon.take()  # nothing from earlier runs is counted in this one
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the relay process failed ({done.returncode}):\n{done.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    got = daemon.take()
    summary = out["summary"]
    if not (summary["ok"] and summary["published"] == events and summary["dead_lettered"] == 1):
        raise SystemExit(f"the run did not drain as expected: {summary}")
    mode = "traced" if traced else "off"
    probe = out["probe"]
    expected = (True, ["botocore"], "LambdaContext") if traced else (False, [], "LambdaContext")
    if (probe["sdk_enabled"], probe["patched"], probe["context"]) != expected:
        raise SystemExit(f"{mode}: the X-Ray SDK is not set up as expected {expected}: {probe}")
    if traced and (got.documents == 0 or got.trace_ids != {root}):
        raise SystemExit(
            f"traced run: {got.documents} trace documents received with trace ids {sorted(got.trace_ids)}"
            f" (expected some, all with {root}): tracing was not on"
        )
    if not traced and got.documents:
        raise SystemExit(f"untraced run: {got.documents} trace documents received: tracing was on")
    if got.sql or got.malformed:
        raise SystemExit(
            f"{mode}: {got.sql} documents record SQL, {got.malformed} are malformed: {got.calls}"
        )
    return {
        "mode": mode,
        "events": events,
        "seconds": out["seconds"],
        "cpu_seconds": out["cpu_seconds"],
        "cpu_us_per_event": out["cpu_seconds"] / events * 1e6,
        "per_s": events / out["seconds"],
        "init_cpu_ms": out["init_cpu_seconds"] * 1e3,
        "documents": got.documents,
        "document_bytes": got.size,
        "subsegments": got.subsegments,
        "calls": dict(got.calls),
        "first_documents": got.first,
        "summary": summary,
        "probe": probe,
    }


# --- the run -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=20_000, help="1 KB events per run (plus one dead letter)"
    )
    parser.add_argument("--pairs", type=int, default=5, help="runs of each mode, alternating")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with DaemonStandIn() as daemon, scratch_database() as database, scratch_queue() as queue_url:
        for pair in range(args.pairs):
            for traced in (True, False) if pair % 2 == 0 else (False, True):
                print(f"  pair {pair + 1}: {'traced' if traced else 'off'}...", flush=True)
                runs.append(run_once(database, queue_url, args.events, traced, daemon))
    results = summarize(runs, args.events)
    report(results)
    (OUT / "tracing.json").write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {OUT / 'tracing.json'}")
    return 0


def summarize(runs: list[dict[str, Any]], events: int) -> dict[str, Any]:
    modes = {}
    for mode in ("traced", "off"):
        mine = [r for r in runs if r["mode"] == mode]
        modes[mode] = {
            "cpu_us_per_event_median": statistics.median(r["cpu_us_per_event"] for r in mine),
            "per_s_median": statistics.median(r["per_s"] for r in mine),
            "init_cpu_ms_median": statistics.median(r["init_cpu_ms"] for r in mine),
        }
    traced = [r for r in runs if r["mode"] == "traced"]
    off = [r for r in runs if r["mode"] == "off"]
    return {
        "events": events,
        "runs": runs,
        "modes": modes,
        "ratio_of_medians": modes["traced"]["cpu_us_per_event_median"]
        / modes["off"]["cpu_us_per_event_median"],
        "ratio_per_pair": [
            t["cpu_us_per_event"] / o["cpu_us_per_event"] for t, o in zip(traced, off, strict=True)
        ],
    }


def report(results: dict[str, Any]) -> None:
    print(f"\none handler invocation, {results['events']} events of 1 KB + 1 dead letter, per run:")
    header = f"{'mode':>6}  {'CPU/event':>10}  {'events/s':>8}  {'init CPU':>8}  {'docs':>4}  {'bytes':>6}  calls traced"
    print(header)
    print("-" * len(header))
    for r in results["runs"]:
        calls = ", ".join(f"{name} x{n}" for name, n in sorted(r["calls"].items())) or "-"
        print(
            f"{r['mode']:>6}  {r['cpu_us_per_event']:>7.1f} us  {r['per_s']:>8.0f}  {r['init_cpu_ms']:>5.0f} ms  "
            f"{r['documents']:>4}  {r['document_bytes']:>6}  {calls}"
        )
    traced, off = results["modes"]["traced"], results["modes"]["off"]
    pairs = ", ".join(f"{x:.3f}" for x in results["ratio_per_pair"])
    print(
        f"\nmedian CPU per event: traced {traced['cpu_us_per_event_median']:.1f} us, "
        f"off {off['cpu_us_per_event_median']:.1f} us; traced / off {results['ratio_of_medians']:.3f} "
        f"(per pair: {pairs})"
    )
    extra = traced["cpu_us_per_event_median"] - off["cpu_us_per_event_median"]
    spread = [r["cpu_us_per_event"] for r in results["runs"] if r["mode"] == "off"]
    print(
        f"difference of medians: {extra:+.1f} us/event ({extra * results['events'] / 1000:+.0f} ms per invocation);"
        f" the untraced runs alone spread over {max(spread) - min(spread):.1f} us/event"
    )


if __name__ == "__main__":
    sys.exit(main())
