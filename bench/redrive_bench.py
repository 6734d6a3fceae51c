"""``outbox-relay redrive --all`` over a large retained outbox: wall time, batches, progress.

The shape from issue 16: 3,000 aggregates, one DEAD head each and 14 PUBLISHED events after it
(45,000 retained rows).  The redrive puts each DEAD row back and every later event of its
aggregate with it.  Runs the real command in a subprocess against the local stack's MariaDB, in
a database of its own (dropped afterwards), and prints one JSON line.

    make bench-redrive   [AGGREGATES=3000 LATER=14]
    PYTHONPATH=<other checkout>/functions/relay make bench-redrive   (the same on other code)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymysql

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions" / "relay")]

from outbox_relay.migrate import apply, discover  # noqa: E402
from outbox_relay.sql import OutboxSql  # noqa: E402

AGGREGATES = int(os.environ.get("AGGREGATES", "3000"))
LATER = int(os.environ.get("LATER", "14"))
HOST, PORT, USER, PASSWORD = "127.0.0.1", 3306, "relay", "relay"


def main() -> None:
    name = f"bench_redrive_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        conn = pymysql.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, database=name, autocommit=True
        )
        apply(conn, OutboxSql("outbox"), discover(ROOT / "infra" / "migrations"), lambda _line: None)
        with conn.cursor() as cur:
            rows = [("order", f"o-{a}", "e", b"{}") for _ in range(LATER + 1) for a in range(AGGREGATES)]
            for start in range(0, len(rows), 5000):
                cur.executemany(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES (%s,%s,%s,%s)",
                    rows[start : start + 5000],
                )
            cur.execute("UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6)")
            cur.execute(
                "UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6), published_at = NULL"
                " WHERE id <= %s",
                (AGGREGATES,),
            )
        env = {
            **os.environ,
            "OUTBOX_DB_HOST": HOST,
            "OUTBOX_DB_PORT": str(PORT),
            "OUTBOX_DB_NAME": name,
            "OUTBOX_DB_USER": USER,
            "OUTBOX_DB_PASSWORD": PASSWORD,
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "DLQ_QUEUE_URL": "http://127.0.0.1:5000/000000000000/outbox-relay-dlq",
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "outbox_relay.cli", "redrive", "--all", "--wait", "30"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - started
        with conn.cursor() as cur:
            cur.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status")
            statuses = {str(s): int(n) for s, n in cur.fetchall()}
        lines = done.stdout.splitlines()
        print(
            json.dumps(
                {
                    "aggregates": AGGREGATES,
                    "retained_rows": AGGREGATES * (LATER + 1),
                    "exit": done.returncode,
                    "wall_seconds": round(wall, 2),
                    "progress_lines": sum(1 for line in lines if line.startswith("batch ")),
                    "statuses_after": statuses,
                    "last_line": lines[-1] if lines else done.stderr.strip()[-300:],
                }
            )
        )
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


if __name__ == "__main__":
    main()
