"""``outbox-relay``: the operator's command line.

    migrate   apply the schema migrations            invoke    run the Lambda handler here
    status    backlog, lag, dead rows, leases        dry-run   what the next run would publish
    janitor   delete old PUBLISHED / DEAD rows       redrive   DEAD rows (or DLQ messages) back
    purge     delete DEAD rows (and their dead letters)   topics    create or read topics

Reads the same environment variables as the Lambda function.  Errors are one line on stderr.
Exit status: 0 done, 1 failed (a dependency; the message says what was done), 2 usage (a bad
option or setting), 3 refused or only previewed (nothing was changed), 4 nothing to do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from . import cli_dead, cli_letters, cli_schema
from .cli_common import (
    FAILED,
    REFUSED,
    USAGE,
    CommandError,
    CommandFailed,
    Parser,
    integer,
    one_line,
    quoted,
    seconds,
    store_runtime,
    table,
)
from .config import ConfigError
from .migrate import MigrationError
from .rowtext import shown


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


def _event(path: str | None) -> Any:
    if not path:
        return {}
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except RecursionError:  # json's own limit on nesting
        raise ValueError(f"event {quoted(path)}: nested too deeply") from None
    except ValueError as exc:  # not JSON, not UTF-8
        raise ValueError(f"event {quoted(path)} is not JSON: {exc}") from None


def _invoke(args: argparse.Namespace) -> int:
    from .handler import lambda_handler

    event = _event(args.event)
    summary = lambda_handler(event, LocalContext(args.timeout))
    print(json.dumps(summary, indent=2))
    if summary.get("ok"):
        return 0
    stopped = summary.get("stopped_by")
    why = f"the run failed ({stopped})" if stopped else "not run"
    print(f"outbox-relay invoke: {why}: {one_line(str(summary.get('error')))}", file=sys.stderr)
    return FAILED


def _status(args: argparse.Namespace) -> int:
    runtime = store_runtime()
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
    if status.missing_shards:
        missing = ", ".join(map(str, status.missing_shards))
        print(
            f"warning: `{db.table}_shard` has no row for shard(s) {missing}: their pending rows are"
            " counted above, but no relay leases them until a relay run or `outbox-relay migrate`"
            " restores the rows"
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
    runtime = store_runtime()
    preview = runtime.preview(args.limit)
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
    runtime = store_runtime()
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


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="outbox-relay",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n")[1],
    )
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("invoke", help="run the Lambda handler here, as Lambda would")
    i.add_argument("--event", help="event JSON file (- for stdin); default: {} (a manual run)")
    i.add_argument(
        "--timeout",
        type=seconds(1, MAX_LAMBDA_TIMEOUT_SECONDS),
        default=60.0,
        metavar="SECONDS",
        help="the function timeout to simulate, 1 to 900 (default %(default)s)",
    )
    i.set_defaults(run=_invoke)

    s = sub.add_parser("status", help="pending, oldest age, dead, per-topic counts, leases held")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=_status)

    d = sub.add_parser("dry-run", help="what the next run would publish first (reads only)")
    d.add_argument(
        "--limit",
        type=integer(1, MAX_LIMIT),
        default=50,
        help=f"rows to show, 1 to {MAX_LIMIT} (default %(default)s)",
    )
    d.set_defaults(run=_dry_run)

    j = sub.add_parser("janitor", help="delete PUBLISHED and DEAD rows past their retention, in batches")
    j.add_argument(
        "--max-seconds",
        type=seconds(0, 86_400, above_low=True),
        default=300.0,
        metavar="SECONDS",
        help="stop after this long (default %(default)s)",
    )
    j.set_defaults(run=_janitor)

    cli_dead.add_parsers(sub)
    cli_letters.add_parsers(sub)
    cli_schema.add_parsers(sub)
    return p


# The relay's own largest batch (OUTBOX_BATCH_SIZE).
MAX_LIMIT = 10_000
MAX_LAMBDA_TIMEOUT_SECONDS = 900.0


def main(argv: list[str] | None = None) -> int:
    from .admin_dead import Interrupted
    from .admin_mysql import AdminError
    from .ports import StoreUnavailable

    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (one line: cli_common.Parser)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE)
    try:
        code: int = args.run(args)
    except (MigrationError, AdminError, CommandError) as exc:
        print(f"outbox-relay {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return REFUSED
    except (StoreUnavailable, CommandFailed, Interrupted) as exc:
        print(f"outbox-relay {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return FAILED
    except (ConfigError, OSError, ValueError) as exc:  # a bad setting, an unreadable or bad event file
        print(f"outbox-relay {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        # A second Ctrl-C (the first stops commands that change data at a checkpoint): at once.
        print(f"outbox-relay {args.command}: interrupted", file=sys.stderr)
        return FAILED
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in RELAY_EXTRA_MODULES:
            raise
        print(
            f"outbox-relay {args.command}: needs the relay's dependencies ({exc}): "
            "pip install 'outbox-relay[relay]'",
            file=sys.stderr,
        )
        return USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
