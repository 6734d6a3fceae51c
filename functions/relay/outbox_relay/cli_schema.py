"""``outbox-relay migrate`` and ``outbox-relay topics``: the schema in the database and in Kafka."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli_common import (
    NOTHING_TO_DO,
    CommandError,
    CommandFailed,
    add_timeout,
    command_deadline,
    integer,
    seconds,
)
from .config import load_database_settings, load_kafka_settings
from .migrate import DEFAULT_DIR, LOCK_WAIT_SECONDS, MigrationFailed, SchemaMismatch, apply, discover
from .sql import OutboxSql


def _migrate(args: argparse.Namespace) -> int:
    import pymysql

    from .db import SecretReader, connector

    settings = load_database_settings(os.environ)
    migrations = discover(Path(args.dir))
    read_secret: SecretReader | None = None
    if settings.password is None and settings.secret_arn is not None:  # needs the relay extra
        from .runtime import read_secret
    deadline = command_deadline(args)
    assert deadline is not None

    def time_left() -> float:
        return max(0.5, deadline - time.monotonic())

    try:
        conn = connector(settings, read_secret, timeout=time_left)()
        try:
            apply(conn, OutboxSql(settings.table), migrations, print, args.lock_wait, deadline)
        finally:
            conn.close()
    except SchemaMismatch as exc:
        if exc.changed:  # migrations were applied before the difference was found
            raise CommandFailed(str(exc)) from exc
        raise
    except MigrationFailed as exc:  # part-way: what ran is kept, a re-run completes it
        raise CommandFailed(str(exc)) from exc
    except pymysql.err.MySQLError as exc:
        # A dependency failed (exit 1): every migration statement is idempotent, a re-run completes it.
        raise CommandFailed(f"database error: {' '.join(str(exc).split())}; run migrate again") from exc
    return 0


MIGRATE_SECONDS = 3600.0

# Partitions per topic this command creates; more is a typo (or your infrastructure code's job).
MAX_PARTITIONS = 1000
MAX_REPLICATION_FACTOR = 32767  # Kafka's INT16; the cluster's broker count is checked too


def _topics(args: argparse.Namespace) -> int:
    from kafka import errors as kafka_errors

    from .kafka_tools import TopicsMissing, TopicsRefused, client_settings, ensure_topics, read_topics
    from .messages import legal_topic
    from .ports import CredentialsUnavailable

    illegal = [name for name in args.names if not legal_topic(name)]
    if illegal:
        shown = ", ".join(ascii(name)[:80] for name in illegal[:5])
        raise CommandError(
            f"not a legal topic name: {shown} (1 to 249 of A-Z a-z 0-9 . _ -, not . or .., not one of "
            "Kafka's internal topics); nothing was done"
        )
    settings = load_kafka_settings(os.environ, args.bootstrap)
    where = ",".join(settings.bootstrap_servers)
    try:
        client = client_settings(settings, _read_secret)
        if args.action == "ensure":
            created = ensure_topics(
                settings.bootstrap_servers,
                args.names,
                partitions=args.partitions,
                replication_factor=args.replication_factor,
                client=client,
                timeout_seconds=args.timeout,
            )
            print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")
            there = [name for name in dict.fromkeys(args.names) if name not in created]
            if there:
                print(f"already there (left as they are): {', '.join(there)}")
            return 0
        records = read_topics(
            settings.bootstrap_servers, args.names, args.timeout, client=client, missing_ok=False
        )
    except TopicsRefused as exc:
        raise CommandError(str(exc)) from exc
    except TopicsMissing as exc:
        print(f"outbox-relay topics: no such topic: {exc}; nothing was read", file=sys.stderr)
        return NOTHING_TO_DO
    except kafka_errors.KafkaTimeoutError as exc:
        raise CommandFailed(
            f"no answer from Kafka at {where} within {args.timeout:g} s ({_one_line(exc)})"
        ) from exc
    except (kafka_errors.KafkaError, CredentialsUnavailable, TimeoutError) as exc:
        raise CommandFailed(f"Kafka at {where}: {_one_line(exc)}") from exc
    for r in records[-args.limit :] if args.limit else records:
        headers = {k: v.decode(errors="replace") for k, v in r.headers.items()}
        value = (r.value or b"").decode(errors="replace")
        print(
            f"{r.topic}[{r.partition}]@{r.offset} key={(r.key or b'').decode(errors='replace')} "
            f"headers={json.dumps(headers)} value={value[:120]}"
        )
    print(f"{len(records)} record(s) in {', '.join(args.names)}")
    return 0


def _one_line(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())
    name = type(exc).__name__
    return (detail if detail.startswith(name) else f"{name}: {detail}")[:400]


def _read_secret(arn: str) -> str:
    """The SCRAM secret (KAFKA_SASL_SECRET_ARN), read only when the mechanism needs it."""
    from .runtime import read_secret

    return read_secret(arn)


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
    # Generous: building an index on a large live table takes minutes (README, "The outbox table").
    add_timeout(
        m, MIGRATE_SECONDS, "give up after this long, exit 1; a re-run completes it (default %(default)s)"
    )
    m.set_defaults(run=_migrate)

    t = sub.add_parser("topics", help="create topics, or read them back")
    t.add_argument("action", choices=("ensure", "read"))
    t.add_argument("names", nargs="+")
    t.add_argument(
        "--partitions", type=integer(1, MAX_PARTITIONS), default=3, help="ensure: per new topic (default 3)"
    )
    t.add_argument(
        "--replication-factor",
        type=integer(1, MAX_REPLICATION_FACTOR),
        default=None,
        metavar="N",
        help="ensure: per new topic (default: min(3, the cluster's brokers))",
    )
    t.add_argument(
        "--limit", type=integer(0, 10**9), default=0, help="read: print only the last N records (0: all)"
    )
    t.add_argument(
        "--timeout",
        type=seconds(0, 3600, above_low=True),
        default=30.0,
        help="give up on an unreachable cluster after this long (default 30 s)",
    )
    t.add_argument("--bootstrap", nargs="*", help="default: KAFKA_BOOTSTRAP_SERVERS")
    t.set_defaults(run=_topics)
