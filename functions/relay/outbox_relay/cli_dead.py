"""``redrive`` and ``purge``: DEAD rows, and the dead letters that name them (cli_letters.py).

Each acts on a fixed set: the ids given, the DEAD rows up to an id (``--max-id``, printed by the
preview, with ``--expect`` the count it showed), or the letters read once.  Rows change in
batches (one statement or one transaction each); Ctrl-C stops between two batches.  Letters go
before their rows: an interrupted ``purge --dlq`` leaves DEAD rows whose letters are gone (a
re-run finishes it), never a letter of a purged row.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from .admin_dead import (
    REDRIVABLE,
    STALE,
    DeadRow,
    DeadRowsAdmin,
    Interrupted,
    RedriveReport,
)
from .cli_common import (
    DONE,
    MAX_OUTBOX_ID,
    NOTHING_TO_DO,
    REFUSED,
    CommandError,
    integer,
    outbox_ids,
    seconds,
    table,
)
from .cli_letters import admins, advise, delete, release, say, scan
from .dlq_admin import DeadLetterQueueAdmin
from .interrupts import Deferred
from .rowtext import shown

SHOWN_ROWS = 50


# --- redrive -----------------------------------------------------------------------------------


def _redrive(args: argparse.Namespace) -> int:
    dead, queue = admins(args.from_dlq)
    report = RedriveReport()
    with Deferred() as checkpoint:
        if queue is None:
            rows = dead.dead_rows(args.ids) if args.ids else dead.dead_rows(max_id=args.max_id)
            missing = sorted(set(args.ids or ()) - {r.id for r in rows})
            if missing:
                raise CommandError(
                    f"not DEAD (or not found): ids {', '.join(map(str, missing[:20]))}; nothing was changed"
                )
            if not rows:
                say("no DEAD rows to redrive")
                return NOTHING_TO_DO
            _redrive_rows(dead, rows, args.wait, checkpoint, report)
            return DONE
        return _redrive_letters(dead, queue, args, checkpoint, report)


def _redrive_rows(
    dead: DeadRowsAdmin, rows: Sequence[DeadRow], wait: float, checkpoint: Deferred, report: RedriveReport
) -> None:
    say(f"redriving {len(rows)} DEAD row(s); leasing their shard(s) so no relay publishes them meanwhile...")
    try:
        dead.redrive(rows, say, checkpoint, wait, report)
    except Interrupted:
        raise Interrupted(f"interrupted: {_redrove(report)}; run the same command again to finish") from None
    say(_redrove(report))
    if report.order_at_risk:
        say(
            f"warning: {len(report.order_at_risk)} aggregate(s) may have later events already deleted by "
            f"retention ({', '.join(report.order_at_risk[:10])}): those cannot go out again after the "
            "redriven event, so consumers may see it after them (compare `seq`)"
        )
    say(json.dumps(report.as_dict()))


def _redrove(report: RedriveReport) -> str:
    return (
        f"redrove {report.redriven} event(s) of {report.aggregates} aggregate(s); "
        f"{report.republished} later event(s) of those aggregates will be published again after them"
    )


def _redrive_letters(
    dead: DeadRowsAdmin,
    queue: DeadLetterQueueAdmin,
    args: argparse.Namespace,
    checkpoint: Deferred,
    report: RedriveReport,
) -> int:
    letters = scan(queue, args.max, checkpoint)
    deleted = 0
    try:
        found = dead.sort_letters(letters)
        say(f"read {len(letters)} dead letter(s) from the queue: {found.counts()}")
        rows = sorted(found.rows.values(), key=lambda r: r.id)
        interrupted: Interrupted | None = None
        if rows:
            try:
                _redrive_rows(dead, rows, args.wait, checkpoint, report)
            except Interrupted as exc:
                interrupted = exc
        # The letters of the rows redriven (also when stopped part-way) and the spent ones.
        done = set(report.done)
        spent = [x for x in found.letters[REDRIVABLE] if x.outbox_id in done] + found.letters[STALE]
        deleted = delete(queue, spent, "their rows redriven, or stale")
        if interrupted is not None:
            raise interrupted
        advise(found)
        return DONE if rows or spent else NOTHING_TO_DO
    finally:
        release(queue, letters, deleted)


# --- purge -------------------------------------------------------------------------------------


def _purge(args: argparse.Namespace) -> int:
    dead, queue = admins(args.dlq)
    if args.all:
        rows = dead.dead_rows(max_id=args.max_id)
    else:
        states = dead.states(args.ids)
        alive = [i for i in args.ids if states.get(i, "DEAD") != "DEAD"]
        if alive:
            raise CommandError(f"not DEAD: ids {', '.join(map(str, alive[:20]))}; nothing was deleted")
        gone = [i for i in args.ids if i not in states]
        if gone:  # a re-run after an interrupted purge finds these gone: not an error
            say(f"{len(gone)} id(s) not found (already purged?): {', '.join(map(str, gone[:20]))}")
        rows = dead.dead_rows(args.ids)
    if not rows:
        say("no DEAD rows to purge")
        return NOTHING_TO_DO
    _show_rows(rows)
    guard = f"--all --max-id {rows[-1].id} --expect {len(rows)}"
    if not args.yes:
        again = guard if args.all else f"--ids {','.join(str(r.id) for r in rows)}"
        say(
            f"\n{len(rows)} DEAD row(s) would be deleted{' with their dead letters' if args.dlq else ''}; "
            f"nothing was deleted. To delete exactly these: outbox-relay purge {again}"
            f"{' --dlq' if args.dlq else ''} --yes"
        )
        return REFUSED
    if args.all:
        if args.max_id is None or args.expect is None:
            raise CommandError(
                f"--all --yes needs the guard the preview printed ({guard}): rows may go DEAD between "
                "the preview and the purge; nothing was deleted"
            )
        if len(rows) != args.expect:
            raise CommandError(
                f"{len(rows)} DEAD row(s) up to id {args.max_id} now, the preview showed {args.expect}: "
                "nothing was deleted; preview again"
            )
    with Deferred() as checkpoint:
        if queue is not None:
            _purge_letters(dead, queue, rows, args.max_letters, checkpoint)
        deleted = 0
        try:
            deleted = dead.purge([r.id for r in rows], say, checkpoint)
        except Interrupted:
            raise Interrupted(
                f"interrupted: deleted {deleted} DEAD row(s) so far; run the same command again to finish"
            ) from None
    say(f"deleted {deleted} DEAD row(s)")
    if deleted < len(rows):
        say(f"{len(rows) - deleted} row(s) were no longer DEAD (redriven meanwhile) and were kept")
    return DONE


def _purge_letters(
    dead: DeadRowsAdmin,
    queue: DeadLetterQueueAdmin,
    rows: Sequence[DeadRow],
    max_letters: int,
    checkpoint: Deferred,
) -> None:
    """The letters of ``rows`` first: a purge stopped after them leaves DEAD rows a re-run deletes."""
    letters = scan(queue, max_letters, checkpoint)
    deleted = 0
    try:
        found = dead.sort_letters(letters)
        ids = {r.id for r in rows}
        theirs = [x for x in found.letters[REDRIVABLE] if x.outbox_id in ids]
        deleted = delete(queue, theirs, "of the rows to purge")
        if len(letters) >= max_letters:
            say(
                f"read the limit of {max_letters} letter(s): letters of these rows further back stay "
                "(`outbox-relay dlq remove --stale` removes them after the purge)"
            )
    finally:
        release(queue, letters, deleted)


def _show_rows(rows: Sequence[DeadRow]) -> None:
    print(
        table(
            ["ID", "AGGREGATE", "EVENT ID"],
            [
                [r.id, shown(f"{r.aggregate_type}/{r.aggregate_id}"), shown(r.event_id)]
                for r in rows[:SHOWN_ROWS]
            ],
        )
    )
    if len(rows) > SHOWN_ROWS:
        print(f"... and {len(rows) - SHOWN_ROWS} more")


# --- the parsers -------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    wait = seconds(0.0, 900.0)
    r = sub.add_parser("redrive", help="DEAD rows back to PENDING, keeping each aggregate in order")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--ids", type=outbox_ids, help="comma-separated outbox ids of DEAD rows")
    source.add_argument("--all", action="store_true", help="every DEAD row (up to --max-id)")
    source.add_argument(
        "--from-dlq", action="store_true", help="the DEAD rows the letters in DLQ_QUEUE_URL name"
    )
    r.add_argument("--max-id", type=integer(1, MAX_OUTBOX_ID), help="with --all: only rows up to this id")
    r.add_argument(
        "--max",
        type=integer(1, 100_000),
        default=1000,
        help="with --from-dlq: letters to read (default %(default)s)",
    )
    r.add_argument(
        "--wait",
        type=wait,
        default=120.0,
        help="seconds to wait for running relays to give the shards back (default %(default)s, at most 900)",
    )
    r.set_defaults(run=_redrive)

    u = sub.add_parser("purge", help="delete DEAD rows (and with --dlq their dead letters first)")
    which = u.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", type=outbox_ids)
    which.add_argument("--all", action="store_true")
    u.add_argument("--max-id", type=integer(1, MAX_OUTBOX_ID), help="with --all: only rows up to this id")
    u.add_argument(
        "--expect", type=integer(1, MAX_OUTBOX_ID), help="with --all --yes: the count the preview showed"
    )
    u.add_argument("--dlq", action="store_true", help="also delete their letters from the dead-letter queue")
    u.add_argument(
        "--max-letters",
        type=integer(1, 1_000_000),
        default=100_000,
        help="with --dlq: letters to read at most (default %(default)s)",
    )
    u.add_argument("--yes", action="store_true", help="really delete (otherwise only show what would go)")
    u.set_defaults(run=_purge)
