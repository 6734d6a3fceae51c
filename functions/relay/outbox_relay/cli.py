"""``outbox-relay``: the operator's command line (migrate, invoke, topics).

Reads the same environment variables as the Lambda function.  Errors are one line on stderr and
a non-zero exit status; nothing is half-applied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config, load_database_settings
from .migrate import DEFAULT_DIR, MigrationError, apply, discover
from .sql import OutboxSql


class LocalContext:
    """A Lambda context for running the handler outside Lambda, with a real countdown."""

    def __init__(self, timeout_seconds: float) -> None:
        self.aws_request_id = f"local-{uuid.uuid4()}"
        self.function_name = "outbox-relay-local"
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 256
        self.invoked_function_arn = "arn:aws:lambda:local:000000000000:function:outbox-relay-local"
        self.log_group_name = self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _migrate(args: argparse.Namespace) -> int:
    from .db import connector

    settings = load_database_settings(os.environ)
    migrations = discover(Path(args.dir))
    conn = connector(settings)()
    try:
        apply(conn, OutboxSql(settings.table), migrations, print)
    finally:
        conn.close()
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


def _topics(args: argparse.Namespace) -> int:
    from .kafka_tools import ensure_topics, read_topics

    bootstrap = load_config(os.environ).kafka.bootstrap_servers if not args.bootstrap else args.bootstrap
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outbox-relay", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="apply the schema migrations to OUTBOX_DB_* / OUTBOX_TABLE")
    m.add_argument("--dir", default=str(DEFAULT_DIR), help="migrations directory (default: %(default)s)")
    m.set_defaults(run=_migrate)

    i = sub.add_parser("invoke", help="run the Lambda handler here, as Lambda would")
    i.add_argument("--event", help="event JSON file (- for stdin); default: {} (a manual run)")
    i.add_argument("--timeout", type=float, default=60.0, help="the function timeout to simulate, seconds")
    i.set_defaults(run=_invoke)

    t = sub.add_parser("topics", help="create topics, or read them back")
    t.add_argument("action", choices=("ensure", "read"))
    t.add_argument("names", nargs="+")
    t.add_argument("--partitions", type=int, default=3)
    t.add_argument("--limit", type=int, default=0, help="read: print only the last N records")
    t.add_argument("--bootstrap", nargs="*", help="default: KAFKA_BOOTSTRAP_SERVERS")
    t.set_defaults(run=_topics)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ConfigError, MigrationError) as exc:
        print(f"outbox-relay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"outbox-relay: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. an event file that is not JSON
        print(f"outbox-relay: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
