"""``outbox-relay migrate`` and ``outbox-relay topics``: the schema in the database and in Kafka."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .cli_common import CommandError, CommandFailed, integer
from .config import load_config, load_database_settings
from .migrate import DEFAULT_DIR, LOCK_WAIT_SECONDS, SchemaMismatch, apply, discover
from .sql import OutboxSql


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
            apply(conn, OutboxSql(settings.table), migrations, print, args.lock_wait)
        finally:
            conn.close()
    except SchemaMismatch as exc:
        if exc.changed:  # migrations were applied before the difference was found
            raise CommandFailed(str(exc)) from exc
        raise
    except pymysql.err.MySQLError as exc:
        raise CommandError(f"database error: {' '.join(str(exc).split())}") from exc
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


def add_parsers(sub: Any) -> None:
    m = sub.add_parser("migrate", help="apply the schema migrations to OUTBOX_DB_* / OUTBOX_TABLE")
    m.add_argument("--dir", default=str(DEFAULT_DIR), help="migrations directory (default: %(default)s)")
    m.add_argument(
        "--lock-wait",
        type=integer(0, 3600),
        default=LOCK_WAIT_SECONDS,
        metavar="SECONDS",
        help="wait this long for another migrate of the same table (default %(default)s)",
    )
    m.set_defaults(run=_migrate)

    t = sub.add_parser("topics", help="create topics, or read them back")
    t.add_argument("action", choices=("ensure", "read"))
    t.add_argument("names", nargs="+")
    t.add_argument("--partitions", type=int, default=3)
    t.add_argument("--limit", type=int, default=0, help="read: print only the last N records")
    t.add_argument("--bootstrap", nargs="*", help="default: KAFKA_BOOTSTRAP_SERVERS")
    t.set_defaults(run=_topics)
