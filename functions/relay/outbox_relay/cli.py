"""``outbox-relay``: the operator's command line.

    migrate   apply the schema migrations            invoke    run the Lambda handler here
    status    backlog, lag, dead rows, leases        dry-run   what the next run would publish
    janitor   delete old PUBLISHED / DEAD rows       redrive   DEAD rows (or DLQ messages) back
    purge     delete DEAD rows (and their dead letters)   topics    create or read topics

Reads the same environment variables as the Lambda function.  Errors are one line on stderr and
exit status 2; nothing is half-applied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config, load_database_settings
from .migrate import DEFAULT_DIR, MigrationError, apply, discover
from .ports import NullMetrics
from .rowtext import shown
from .sql import OutboxSql


class LocalContext:
    """A Lambda context for running the handler outside Lambda, with a real countdown."""

    def __init__(self, timeout_seconds: float, request_id: str | None = None) -> None:
        self.aws_request_id = request_id or f"local-{uuid.uuid4()}"
        self.function_name = "outbox-relay-local"
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 256
        self.invoked_function_arn = "arn:aws:lambda:local:000000000000:function:outbox-relay-local"
        self.log_group_name = self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class CommandError(Exception):
    """Refused before anything changed."""


# Top-level modules of the `relay` extra.  A plain `pip install outbox-relay` (the writer and
# consumer helpers) lacks them; the subcommands that need them import them when they run.
RELAY_EXTRA_MODULES = frozenset(
    {
        "aws_lambda_powertools",
        "aws_msk_iam_sasl_signer",
        "aws_xray_sdk",
        "boto3",
        "botocore",
        "crc32c",
        "kafka",
    }
)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows) for i in range(len(headers))
    ]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def _runtime() -> Any:
    from .runtime import runtime_for

    return runtime_for(load_config(os.environ))


def _migrate(args: argparse.Namespace) -> int:
    import pymysql

    from .db import SecretReader, connector

    settings = load_database_settings(os.environ)
    migrations = discover(Path(args.dir))
    read_secret: SecretReader | None = None
    if settings.password is None and settings.secret_arn is not None:  # needs the relay extra
        from .runtime import read_secret
    try:
        conn = connector(settings, read_secret)()
        try:
            apply(conn, OutboxSql(settings.table), migrations, print)
        finally:
            conn.close()
    except pymysql.err.MySQLError as exc:
        raise CommandError(f"database error: {' '.join(str(exc).split())}") from exc
    return 0


def _invoke(args: argparse.Namespace) -> int:
    from .handler import lambda_handler

    event: Any = {}
    if args.event == "-":
        event = json.load(sys.stdin)
    elif args.event:
        event = json.loads(Path(args.event).read_text(encoding="utf-8"))
    summary = lambda_handler(event, LocalContext(args.timeout))
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("ok") else 1


def _status(args: argparse.Namespace) -> int:
    runtime = _runtime()
    status = runtime.admin().status()
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    db = runtime.config.database
    print(f"outbox `{db.table}` on {db.host}:{db.port}/{db.name}")
    print(
        table(
            ["PENDING", "OLDEST PENDING (s)", "DEAD", "PUBLISHED (retained)"],
            [[status.pending, round(status.oldest_pending_age_seconds, 1), status.dead, status.published]],
        )
    )
    print()
    print(table(["TOPIC", "PENDING", "DEAD"], [[r.topic, r.pending, r.dead] for r in status.routes]))
    print()
    print(f"leases held: {len(status.leases)}")
    if status.leases:
        print(
            table(
                ["SHARD", "OWNER", "FENCE", "EXPIRES IN (s)"],
                [[x.shard, x.owner, x.fence, round(x.seconds_left, 1)] for x in status.leases],
            )
        )
    print()
    print(f"aggregates held back by a row in backoff: {status.blocked_count}")
    if status.blocked:
        print(
            table(
                ["AGGREGATE", "ATTEMPTS", "RETRY IN (s)", "WHY"],
                [
                    [
                        f"{b.aggregate_type}/{b.aggregate_id}"[:60],
                        b.attempts,
                        round(b.retry_in_seconds, 1),
                        b.reason[:80],
                    ]
                    for b in status.blocked
                ],
            )
        )
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    runtime = _runtime()
    preview = runtime.relay(runtime.config.relay, NullMetrics(), owner="dry-run").preview(args.limit)
    rows = [
        [
            r.id,
            r.shard,
            shown(f"{r.aggregate_type}/{r.aggregate_id}"),
            shown(r.event_type),
            len(r.payload),
            verdict,
        ]
        for r, verdict in preview
    ]
    print(table(["ID", "SHARD", "AGGREGATE", "EVENT TYPE", "BYTES", "NEXT RUN WOULD"], rows))
    publish = sum(1 for _, verdict in preview if verdict.startswith("publish"))
    print(
        f"\n{len(preview)} row(s) at the heads of the shards: {publish} would be published "
        "(nothing was leased, written or sent)"
    )
    return 0


def _janitor(args: argparse.Namespace) -> int:
    runtime = _runtime()
    retention = runtime.config.retention
    print(
        f"deleting PUBLISHED rows older than {retention.published_seconds}s and DEAD rows older than "
        f"{retention.dead_seconds}s, {retention.batch_size} at a time..."
    )
    report = runtime.admin().janitor(retention, time.monotonic() + args.max_seconds, print)
    print(
        f"done: {report.deleted_published} published and {report.deleted_dead} dead row(s) deleted in "
        f"{report.batches} batch(es) ({report.stopped_by})"
    )
    return 0


def _redrive(args: argparse.Namespace) -> int:
    runtime = _runtime()
    admin = runtime.admin()
    receipts: list[str] = []
    if args.from_dlq:
        letters = runtime.dead_letters.receive(args.max)
        print(f"read {len(letters)} dead letter(s) from {runtime.config.dlq_queue_url}")
        rows = admin.dead_rows_for_events([str(body.get("event_id", "")) for _, body in letters])
        found = {r.event_id for r in rows}
        receipts = [receipt for receipt, body in letters if body.get("event_id") in found]
        skipped = len(letters) - len(receipts)
        if skipped:
            print(
                f"{skipped} dead letter(s) have no DEAD row any more (redriven or purged); left in the queue"
            )
        ids = [r.id for r in rows]
    elif args.all:
        ids = [r.id for r in admin.dead_rows()]
    else:
        ids = args.ids
    if not ids:
        print("nothing to redrive")
        return 0
    report = admin.redrive(ids, print, wait_seconds=args.wait)
    if receipts:
        runtime.dead_letters.delete(receipts)
        print(f"deleted {len(receipts)} redriven message(s) from the dead-letter queue")
    print(json.dumps(report.as_dict()))
    return 0


def _purge(args: argparse.Namespace) -> int:
    runtime = _runtime()
    admin = runtime.admin()
    rows = admin.dead_rows() if args.all else admin.dead_rows(args.ids)
    missing = sorted(set(args.ids or ()) - {r.id for r in rows})
    if missing:
        raise CommandError(
            f"not DEAD (or not found): ids {', '.join(map(str, missing[:20]))}; nothing was deleted"
        )
    if not rows:
        print("no DEAD rows to purge")
        return 0
    print(
        table(
            ["ID", "AGGREGATE", "EVENT ID"],
            [[r.id, shown(f"{r.aggregate_type}/{r.aggregate_id}"), shown(r.event_id)] for r in rows[:50]],
        )
    )
    if len(rows) > 50:
        print(f"... and {len(rows) - 50} more")
    if not args.yes:
        print(f"\n{len(rows)} DEAD row(s) would be deleted; nothing was deleted (add --yes)")
        return 1
    deleted = admin.purge_dead([r.id for r in rows])
    print(f"deleted {deleted} DEAD row(s)")
    if args.dlq:
        events = {r.event_id for r in rows}
        letters = runtime.dead_letters.receive(10_000)
        matching = [receipt for receipt, body in letters if body.get("event_id") in events]
        runtime.dead_letters.delete(matching)
        print(f"deleted {len(matching)} matching message(s) from the dead-letter queue")
    return 0


def _topics(args: argparse.Namespace) -> int:
    from .kafka_tools import ensure_topics, read_topics

    bootstrap = args.bootstrap or load_config(os.environ).kafka.bootstrap_servers
    if args.action == "ensure":
        created = ensure_topics(bootstrap, args.names, partitions=args.partitions)
        print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")
        return 0
    records = read_topics(bootstrap, args.names)
    for r in records[-args.limit :] if args.limit else records:
        headers = {k: v.decode(errors="replace") for k, v in r.headers.items()}
        value = (r.value or b"").decode(errors="replace")
        print(
            f"{r.topic}[{r.partition}]@{r.offset} key={(r.key or b'').decode(errors='replace')} "
            f"headers={json.dumps(headers)} value={value[:120]}"
        )
    print(f"{len(records)} record(s) in {', '.join(args.names)}")
    return 0


def _ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated outbox ids, got {text!r}") from None
    if not ids or any(i <= 0 for i in ids):
        raise argparse.ArgumentTypeError(f"expected positive outbox ids, got {text!r}")
    return ids


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="outbox-relay",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n")[1],
    )
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="apply the schema migrations to OUTBOX_DB_* / OUTBOX_TABLE")
    m.add_argument("--dir", default=str(DEFAULT_DIR), help="migrations directory (default: %(default)s)")
    m.set_defaults(run=_migrate)

    i = sub.add_parser("invoke", help="run the Lambda handler here, as Lambda would")
    i.add_argument("--event", help="event JSON file (- for stdin); default: {} (a manual run)")
    i.add_argument("--timeout", type=float, default=60.0, help="the function timeout to simulate, seconds")
    i.set_defaults(run=_invoke)

    s = sub.add_parser("status", help="pending, oldest age, dead, per-topic counts, leases held")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=_status)

    d = sub.add_parser("dry-run", help="what the next run would publish first (reads only)")
    d.add_argument("--limit", type=int, default=50)
    d.set_defaults(run=_dry_run)

    j = sub.add_parser("janitor", help="delete PUBLISHED and DEAD rows past their retention, in batches")
    j.add_argument(
        "--max-seconds", type=float, default=300.0, help="stop after this long (default %(default)s)"
    )
    j.set_defaults(run=_janitor)

    r = sub.add_parser("redrive", help="DEAD rows back to PENDING, keeping each aggregate in order")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--ids", type=_ids, help="comma-separated outbox ids of DEAD rows")
    source.add_argument("--all", action="store_true", help="every DEAD row")
    source.add_argument(
        "--from-dlq", action="store_true", help="the rows of the dead letters in DLQ_QUEUE_URL"
    )
    r.add_argument(
        "--max", type=int, default=1000, help="with --from-dlq: messages to read (default %(default)s)"
    )
    r.add_argument("--wait", type=float, default=10.0, help="seconds to wait for running relays' leases")
    r.set_defaults(run=_redrive)

    u = sub.add_parser("purge", help="delete DEAD rows (and with --dlq their dead letters)")
    which = u.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", type=_ids)
    which.add_argument("--all", action="store_true")
    u.add_argument("--dlq", action="store_true", help="also delete their messages from the dead-letter queue")
    u.add_argument("--yes", action="store_true", help="really delete (otherwise only show what would go)")
    u.set_defaults(run=_purge)

    t = sub.add_parser("topics", help="create topics, or read them back")
    t.add_argument("action", choices=("ensure", "read"))
    t.add_argument("names", nargs="+")
    t.add_argument("--partitions", type=int, default=3)
    t.add_argument("--limit", type=int, default=0, help="read: print only the last N records")
    t.add_argument("--bootstrap", nargs="*", help="default: KAFKA_BOOTSTRAP_SERVERS")
    t.set_defaults(run=_topics)
    return p


def main(argv: list[str] | None = None) -> int:
    from .admin_mysql import AdminError
    from .ports import StoreUnavailable

    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ConfigError, MigrationError, AdminError, StoreUnavailable, CommandError) as exc:
        print(f"outbox-relay {args.command}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # an unreadable file, an event file that is not JSON
        print(f"outbox-relay {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in RELAY_EXTRA_MODULES:
            raise
        print(
            f"outbox-relay {args.command}: needs the relay's dependencies ({exc}): "
            "pip install 'outbox-relay[relay]'",
            file=sys.stderr,
        )
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
