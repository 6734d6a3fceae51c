"""``outbox-relay``: the operator's command line.

    migrate   apply the schema migrations            invoke    run the Lambda handler here
    status    backlog, lag, dead rows, leases        dry-run   what the next run would publish
    janitor   delete old PUBLISHED / DEAD rows       redrive   DEAD rows (or DLQ messages) back
    purge     delete DEAD rows (and their dead letters)   topics    create or read topics

Reads the same environment variables as the Lambda function (status, dry-run and janitor only
the database's).  --timeout SECONDS bounds a whole command (default 60).  Errors are one line on
stderr.  Exit status: 0 done (or stdout closed), 1 failed (a dependency, --timeout, Ctrl-C, a run
not ok; the message says what was done), 2 usage (a bad option or setting), 3 refused or only
previewed (nothing was changed), 4 nothing to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from . import cli_dead, cli_letters, cli_schema
from .cli_common import (
    DEFAULT_TIMEOUT_SECONDS,
    DONE,
    FAILED,
    MAX_TIMEOUT_SECONDS,
    MIN_TIMEOUT_SECONDS,
    REFUSED,
    USAGE,
    CommandError,
    CommandFailed,
    Parser,
    UsageError,
    add_timeout,
    command_deadline,
    integer,
    one_line,
    quoted,
    retries,
    seconds,
    store_failed,
    store_runtime,
    table,
)
from .config import ConfigError, load_config
from .migrate import MigrationError
from .ports import StoreUnavailable
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
    try:
        margin = load_config(os.environ).relay.stop_margin_seconds
    except ConfigError:
        margin = 0.0  # the handler answers with the problem, as the function would
    if args.timeout <= margin:
        raise ValueError(
            f"--timeout {args.timeout:g} leaves the run no time: it stops "
            f"OUTBOX_STOP_MARGIN_SECONDS={margin:g} s before the end"
        )
    # The function's timeout counts from the command's start, imports included.
    summary = lambda_handler(event, LocalContext(args.started + args.timeout - time.monotonic()))
    print(json.dumps(summary, indent=2))
    if summary.get("ok"):
        return DONE
    stopped = summary.get("stopped_by")
    why = f"the run failed ({stopped})" if stopped else "not run"
    print(f"outbox-relay invoke: {why}: {one_line(str(summary.get('error')))}", file=sys.stderr)
    return FAILED


def _status(args: argparse.Namespace) -> int:
    runtime = store_runtime(command_deadline(args))
    try:
        status = runtime.admin().status()
    except StoreUnavailable as exc:
        raise store_failed(args, runtime, exc, "nothing was changed") from exc
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return DONE
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
    return DONE


def _dry_run(args: argparse.Namespace) -> int:
    runtime = store_runtime(command_deadline(args))
    try:
        preview = runtime.preview(args.limit)
    except StoreUnavailable as exc:
        raise store_failed(args, runtime, exc, "nothing was leased, written or sent") from exc
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
    return DONE


def _janitor(args: argparse.Namespace) -> int:
    from .admin_mysql import JanitorReport

    if args.timeout is None:
        args.timeout = args.max_seconds + JANITOR_TIMEOUT_ROOM_SECONDS
    deadline = args.started + args.timeout
    runtime = store_runtime(deadline)
    retention = runtime.config.retention
    print(
        f"deleting PUBLISHED rows older than {retention.published_seconds}s and DEAD rows older than "
        f"{retention.dead_seconds}s, {retention.batch_size} at a time...",
        flush=True,
    )
    report = JanitorReport()

    def done() -> str:
        return (
            f"{report.deleted_published} published and {report.deleted_dead} dead row(s) deleted in "
            f"{report.batches} batch(es)"
        )

    # No batch starts in the last second of --timeout: a batch takes milliseconds.
    stop = min(args.started + args.max_seconds, deadline - JANITOR_LAST_BATCH_SECONDS)

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        runtime.admin().janitor(retention, stop, progress, report)
    except StoreUnavailable as exc:
        raise store_failed(args, runtime, exc, f"{done()} before that") from exc
    except KeyboardInterrupt:
        raise CommandFailed(f"interrupted: {done()}") from None
    print(f"done: {done()} ({report.stopped_by})")
    return DONE


JANITOR_TIMEOUT_ROOM_SECONDS = 30.0  # janitor: the default --timeout is --max-seconds plus this
JANITOR_LAST_BATCH_SECONDS = 1.0


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="outbox-relay",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("invoke", help="run the Lambda handler here, as Lambda would")
    i.add_argument("--event", help="event JSON file (- for stdin); default: {} (a manual run)")
    i.add_argument(
        "--timeout",
        type=seconds(MIN_TIMEOUT_SECONDS, MAX_LAMBDA_TIMEOUT_SECONDS),
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="the function timeout to simulate, 1 to 900 (default %(default)s): the run stops "
        "OUTBOX_STOP_MARGIN_SECONDS before it",
    )
    i.set_defaults(run=_invoke)

    s = sub.add_parser("status", help="pending, oldest age, dead, per-topic counts, leases held")
    s.add_argument("--json", action="store_true")
    add_timeout(s)
    s.set_defaults(run=_status)

    d = sub.add_parser("dry-run", help="what the next run would publish first (reads only)")
    d.add_argument(
        "--limit",
        type=integer(1, MAX_LIMIT),
        default=50,
        help=f"rows to show, 1 to {MAX_LIMIT} (default %(default)s)",
    )
    add_timeout(d)
    d.set_defaults(run=_dry_run)

    j = sub.add_parser("janitor", help="delete PUBLISHED and DEAD rows past their retention, in batches")
    j.add_argument(
        "--max-seconds",
        type=seconds(0, MAX_TIMEOUT_SECONDS, above_low=True),
        default=300.0,
        metavar="SECONDS",
        help="start no batch after this long (default %(default)s)",
    )
    add_timeout(j, None, "give up after this long, exit 1 (default: --max-seconds + 30)")
    j.set_defaults(run=_janitor)

    cli_dead.add_parsers(sub)
    cli_letters.add_parsers(sub)
    cli_schema.add_parsers(sub)
    return p


# The relay's own largest batch (OUTBOX_BATCH_SIZE).
MAX_LIMIT = 10_000
MAX_LAMBDA_TIMEOUT_SECONDS = 900.0


def _run(args: argparse.Namespace) -> int:
    """The command, its errors as one line on stderr and an exit status."""
    from .admin_dead import Interrupted
    from .admin_mysql import AdminError

    try:
        code: int = args.run(args)
    except BrokenPipeError:  # an OSError, but no bad file: main() ends quietly
        raise
    except (MigrationError, AdminError, CommandError) as exc:
        print(f"outbox-relay {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return REFUSED
    except (StoreUnavailable, CommandFailed, Interrupted) as exc:
        print(f"outbox-relay {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return FAILED
    except (
        ConfigError,
        UsageError,
        OSError,
        ValueError,
    ) as exc:  # a bad setting, an unreadable or bad event file
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


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # --timeout counts from here
    command = "outbox-relay"
    code: int | None = None
    try:
        try:
            args = parser().parse_args(argv)
        except SystemExit as exc:  # --help, or a usage error (one line: cli_common.Parser)
            code = exc.code if isinstance(exc.code, int) else (DONE if exc.code is None else USAGE)
        else:
            args.started = started
            command = f"outbox-relay {args.command}"
            if args.command != "invoke":  # invoke logs as the function does
                retries.install(args.command)
            try:
                code = _run(args)
            finally:
                retries.remove()
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader left (`outbox-relay status | head -1`): end quietly.  Python's recipe: point
        # stdout at /dev/null, so that the flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return DONE if code is None else code
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return FAILED
    except Exception as exc:  # a bug: still one line, not a traceback
        why = one_line(f"{type(exc).__name__}: {exc}")
        print(f"{command}: unexpected error, please report it: {why}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
