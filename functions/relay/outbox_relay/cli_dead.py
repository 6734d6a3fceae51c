"""``outbox-relay redrive`` and ``outbox-relay purge``: DEAD rows and their dead letters."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli_common import REFUSED, CommandError, outbox_ids, relay_runtime, table
from .rowtext import shown


def _redrive(args: argparse.Namespace) -> int:
    runtime = relay_runtime()
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
    runtime = relay_runtime()
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
        return REFUSED
    deleted = admin.purge_dead([r.id for r in rows])
    print(f"deleted {deleted} DEAD row(s)")
    if args.dlq:
        events = {r.event_id for r in rows}
        letters = runtime.dead_letters.receive(10_000)
        matching = [receipt for receipt, body in letters if body.get("event_id") in events]
        runtime.dead_letters.delete(matching)
        print(f"deleted {len(matching)} matching message(s) from the dead-letter queue")
    return 0


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("redrive", help="DEAD rows back to PENDING, keeping each aggregate in order")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--ids", type=outbox_ids, help="comma-separated outbox ids of DEAD rows")
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
    which.add_argument("--ids", type=outbox_ids)
    which.add_argument("--all", action="store_true")
    u.add_argument("--dlq", action="store_true", help="also delete their messages from the dead-letter queue")
    u.add_argument("--yes", action="store_true", help="really delete (otherwise only show what would go)")
    u.set_defaults(run=_purge)
