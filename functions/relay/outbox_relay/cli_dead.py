"""``redrive`` and ``purge``: DEAD rows, and the dead letters that name them (cli_letters.py).

Each acts on a fixed set: the ids given, the DEAD rows up to an id (``--max-id``, printed by the
preview, with ``--expect`` its count and a digest of its ids), or the letters read once.  Rows change in
batches (one statement or one transaction each); Ctrl-C stops between two batches.  Letters go
before their rows: an interrupted ``purge --dlq`` leaves DEAD rows whose letters are gone (a
re-run finishes it), never a letter of a purged row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from .admin_dead import (
    REDRIVABLE,
    STALE,
    Checkpoint,
    DeadRow,
    DeadRowsAdmin,
    Interrupted,
    RedriveReport,
    Tally,
)
from .admin_mysql import AdminError
from .cli_common import (
    DONE,
    NOTHING_TO_DO,
    REFUSED,
    CommandError,
    CommandFailed,
    UsageError,
    add_timeout,
    integer,
    outbox_ids,
    printable,
    seconds,
    table,
)
from .cli_letters import LETTER_COMMAND_SECONDS, Held, admins, advise, delete, release, say, scan
from .dlq_admin import QueueError
from .interrupts import Deferred
from .ports import StoreUnavailable
from .sql import MAX_OUTBOX_ID

SHOWN_ROWS = 50


# --- redrive -----------------------------------------------------------------------------------


def _redrive(args: argparse.Namespace) -> int:
    dead, queue = admins(args, args.from_dlq)
    report = RedriveReport()
    with Deferred() as interrupts:
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
            _redrive_rows(dead, rows, args.wait, interrupts, report)
            return DONE
        held = Held(queue, interrupts)
        try:
            return _redrive_letters(dead, held, args, report)
        finally:
            release(held)


def _redrive_rows(
    dead: DeadRowsAdmin, rows: Sequence[DeadRow], wait: float, checkpoint: Checkpoint, report: RedriveReport
) -> None:
    say(f"redriving {len(rows)} DEAD row(s); leasing their shard(s) so no relay publishes them meanwhile...")
    try:
        dead.redrive(rows, say, checkpoint, wait, report)
    except Interrupted:
        raise Interrupted(f"interrupted: {_redrove(report)}; run the same command again to finish") from None
    except (AdminError, StoreUnavailable, CommandFailed) as exc:
        if not report.redriven:
            raise  # nothing was changed
        raise CommandFailed(f"{exc}; before it {_redrove(report)}: run the same command again") from exc
    say(_redrove(report))
    if report.order_at_risk:
        say(
            f"warning: {len(report.order_at_risk)} aggregate(s) may have later events already deleted by "
            f"retention ({', '.join(map(printable, report.order_at_risk[:10]))}): those cannot go out "
            "again after the redriven event, so consumers may see it after them (compare `seq`)"
        )
    say(json.dumps(report.as_dict()))


def _redrove(report: RedriveReport) -> str:
    return (
        f"redrove {report.redriven} event(s) of {report.aggregates} aggregate(s); "
        f"{report.republished} later event(s) of those aggregates will be published again after them"
    )


def _redrive_letters(dead: DeadRowsAdmin, held: Held, args: argparse.Namespace, report: RedriveReport) -> int:
    letters = scan(held, args.max)
    found = dead.sort_letters(letters)
    say(f"read {len(letters)} dead letter(s) from the queue: {found.counts()}")
    rows = sorted(found.rows.values(), key=lambda r: r.id)
    try:
        if rows:
            _redrive_rows(dead, rows, args.wait, held.checkpoint, report)
    except BaseException:
        # Stopped part-way: the letters of the rows it did redrive go; nothing else does (a
        # refusal changes nothing, stale letters included).
        done = set(report.done)
        delete(held, [x for x in found.letters[REDRIVABLE] if x.outbox_id in done], "their rows redriven")
        raise
    spent = [x for x in found.letters[REDRIVABLE] if x.outbox_id in set(report.done)] + found.letters[STALE]
    delete(held, spent, "their rows redriven, or stale")
    advise(found)
    return DONE if rows or spent else NOTHING_TO_DO


# --- purge -------------------------------------------------------------------------------------


def _digest(rows: Sequence[DeadRow]) -> str:
    """The preview's guard: the ids it showed, so that a purge deletes exactly those."""
    ids = ",".join(str(r.id) for r in rows)
    return f"{len(rows)}:{hashlib.sha256(ids.encode()).hexdigest()[:12]}"


def _guard(text: str) -> str:
    if not re.fullmatch(r"[0-9]{1,20}:[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(f"expected the guard the preview printed (N:digest), got {text!r}")
    return text


def _purge(args: argparse.Namespace) -> int:
    if args.all and args.yes and (args.max_id is None or args.expect is None):
        raise UsageError(
            "purge --all --yes needs the guard the preview (purge --all) prints: --max-id and --expect"
        )
    dead, queue = admins(args, args.dlq)
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
    if not args.yes:
        again = (
            f"--all --max-id {rows[-1].id} --expect {_digest(rows)}"
            if args.all
            else f"--ids {','.join(str(r.id) for r in rows)}"
        )
        say(
            f"\n{len(rows)} DEAD row(s) would be deleted{' with their dead letters' if args.dlq else ''}; "
            f"nothing was deleted. To delete exactly these: outbox-relay purge {again}"
            f"{' --dlq' if args.dlq else ''} --yes"
        )
        return REFUSED
    if args.all and _digest(rows) != args.expect:
        raise CommandError(
            f"the DEAD rows up to id {args.max_id} changed since the preview ({_digest(rows)} now, "
            f"{args.expect} then): nothing was deleted; preview again"
        )
    tally = Tally()
    with Deferred() as interrupts:
        ids = [r.id for r in rows]
        if queue is not None:
            held = Held(queue, interrupts)
            try:
                ids = _purge_letters(dead, held, rows, args.max_letters)
            finally:
                release(held)
        try:
            dead.purge(ids, say, interrupts, tally)
        except (Interrupted, StoreUnavailable) as exc:
            what = "interrupted" if isinstance(exc, Interrupted) else str(exc)
            raise CommandFailed(
                f"{what}: deleted {tally.deleted} DEAD row(s) so far; run the same command again to finish"
            ) from exc
    say(f"deleted {tally.deleted} DEAD row(s)")
    if tally.deleted < len(ids):
        say(f"{len(ids) - tally.deleted} row(s) were no longer DEAD (redriven meanwhile) and were kept")
    if len(ids) < len(rows):
        kept = [r.id for r in rows if r.id not in set(ids)]
        raise CommandFailed(
            f"{len(kept)} row(s) kept (ids {', '.join(map(str, kept[:20]))}): their letters were not "
            "found while another reader held letters out of sight; run the same command again"
        )
    return DONE


def _purge_letters(dead: DeadRowsAdmin, held: Held, rows: Sequence[DeadRow], max_letters: int) -> list[int]:
    """The letters of ``rows`` first (a purge stopped after them leaves DEAD rows a re-run
    deletes).  Returns the rows that may go: those whose letters were deleted, and the others
    only when no one else holds letters out of sight (one of theirs could be among them)."""
    letters = scan(held, max_letters)
    found = dead.sort_letters(letters)
    wanted = {r.id for r in rows}
    theirs = [x for x in found.letters[REDRIVABLE] if x.outbox_id in wanted]
    delete(held, theirs, "of the rows to purge")
    if len(letters) >= max_letters:
        say(
            f"read the limit of {max_letters} letter(s): letters of these rows further back stay "
            "(`outbox-relay dlq remove --stale` removes them after the purge)"
        )
    with_letter = {x.outbox_id for x in theirs}
    try:
        others = held.queue.others_reading() - len(held.letters)
    except QueueError as exc:
        raise CommandFailed(f"{exc}; the letters of these rows were deleted, no row was: run again") from exc
    if others > 0:
        return [r.id for r in rows if r.id in with_letter]
    return [r.id for r in rows]


def _show_rows(rows: Sequence[DeadRow]) -> None:
    say(
        table(
            ["ID", "AGGREGATE", "EVENT ID"],
            [
                [r.id, printable(f"{r.aggregate_type}/{r.aggregate_id}"), printable(r.event_id)]
                for r in rows[:SHOWN_ROWS]
            ],
        )
    )
    if len(rows) > SHOWN_ROWS:
        say(f"... and {len(rows) - SHOWN_ROWS} more")


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
    add_timeout(r, LETTER_COMMAND_SECONDS)
    r.set_defaults(run=_redrive)

    u = sub.add_parser("purge", help="delete DEAD rows (and with --dlq their dead letters first)")
    which = u.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", type=outbox_ids)
    which.add_argument("--all", action="store_true")
    u.add_argument("--max-id", type=integer(1, MAX_OUTBOX_ID), help="with --all: only rows up to this id")
    u.add_argument("--expect", type=_guard, help="with --all --yes: the guard the preview printed")
    u.add_argument("--dlq", action="store_true", help="also delete their letters from the dead-letter queue")
    u.add_argument(
        "--max-letters",
        type=integer(1, 1_000_000),
        default=100_000,
        help="with --dlq: letters to read at most (default %(default)s)",
    )
    u.add_argument("--yes", action="store_true", help="really delete (otherwise only show what would go)")
    add_timeout(u, LETTER_COMMAND_SECONDS)
    u.set_defaults(run=_purge)
