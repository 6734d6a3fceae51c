"""``redrive``, ``purge``, ``dlq`` and ``unlease``: DEAD rows, their dead letters, operator leases.

Each acts on a fixed set: the ids given, the DEAD rows up to an id (``--max-id``, printed by the
preview, with ``--expect`` the count it showed), or the letters read once.  Rows change in
batches (one statement or one transaction each); Ctrl-C stops between two batches.  Letters go
before their rows: an interrupted ``purge --dlq`` leaves DEAD rows whose letters are gone (a
re-run finishes it), never a letter of a purged row.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from .admin_dead import (
    IN_FLIGHT,
    KINDS,
    MALFORMED,
    REDRIVABLE,
    STALE,
    UNMATCHED,
    DeadRow,
    DeadRowsAdmin,
    Interrupted,
    RedriveReport,
    Sorted,
)
from .cli_common import (
    DONE,
    NOTHING_TO_DO,
    REFUSED,
    CommandError,
    CommandFailed,
    integer,
    outbox_ids,
    relay_runtime,
    seconds,
    table,
)
from .dlq_admin import DeadLetterQueueAdmin, Letter, QueueError
from .interrupts import Deferred
from .rowtext import shown

MAX_ID = 2**64 - 1
SHOWN_ROWS = 50
# How long a command may spend reading the queue.
SCAN_SECONDS = 300.0


def _admins(need_queue: bool) -> tuple[DeadRowsAdmin, DeadLetterQueueAdmin | None]:
    runtime = relay_runtime()
    store = runtime.admin().store
    dead = DeadRowsAdmin(store, runtime.config.retention)
    if not need_queue:
        return dead, None
    from .aws_clients import sqs_client

    return dead, DeadLetterQueueAdmin(sqs_client, runtime.config.dlq_queue_url)


def _say(text: str) -> None:
    print(text, flush=True)


# --- redrive -----------------------------------------------------------------------------------


def _redrive(args: argparse.Namespace) -> int:
    dead, queue = _admins(args.from_dlq)
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
                _say("no DEAD rows to redrive")
                return NOTHING_TO_DO
            _redrive_rows(dead, rows, args.wait, checkpoint, report)
            return DONE
        return _redrive_letters(dead, queue, args, checkpoint, report)


def _redrive_rows(
    dead: DeadRowsAdmin, rows: Sequence[DeadRow], wait: float, checkpoint: Deferred, report: RedriveReport
) -> None:
    _say(f"redriving {len(rows)} DEAD row(s); leasing their shard(s) so no relay publishes them meanwhile...")
    try:
        dead.redrive(rows, _say, checkpoint, wait, report)
    except Interrupted:
        raise Interrupted(f"interrupted: {_redrove(report)}; run the same command again to finish") from None
    _say(_redrove(report))
    if report.order_at_risk:
        _say(
            f"warning: {len(report.order_at_risk)} aggregate(s) may have later events already deleted by "
            f"retention ({', '.join(report.order_at_risk[:10])}): those cannot go out again after the "
            "redriven event, so consumers may see it after them (compare `seq`)"
        )
    _say(json.dumps(report.as_dict()))


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
    letters = _scan(queue, args.max, checkpoint)
    deleted = 0
    try:
        found = dead.sort_letters(letters)
        _say(f"read {len(letters)} dead letter(s) from the queue: {found.counts()}")
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
        deleted = _delete(queue, spent, "their rows redriven, or stale")
        if interrupted is not None:
            raise interrupted
        _advise(found)
        return DONE if rows or spent else NOTHING_TO_DO
    finally:
        _release(queue, letters, deleted)


# --- purge -------------------------------------------------------------------------------------


def _purge(args: argparse.Namespace) -> int:
    dead, queue = _admins(args.dlq)
    if args.all:
        rows = dead.dead_rows(max_id=args.max_id)
    else:
        states = dead.states(args.ids)
        alive = [i for i in args.ids if states.get(i, "DEAD") != "DEAD"]
        if alive:
            raise CommandError(f"not DEAD: ids {', '.join(map(str, alive[:20]))}; nothing was deleted")
        gone = [i for i in args.ids if i not in states]
        if gone:  # a re-run after an interrupted purge finds these gone: not an error
            _say(f"{len(gone)} id(s) not found (already purged?): {', '.join(map(str, gone[:20]))}")
        rows = dead.dead_rows(args.ids)
    if not rows:
        _say("no DEAD rows to purge")
        return NOTHING_TO_DO
    _show_rows(rows)
    guard = f"--all --max-id {rows[-1].id} --expect {len(rows)}"
    if not args.yes:
        again = guard if args.all else f"--ids {','.join(str(r.id) for r in rows)}"
        _say(
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
            deleted = dead.purge([r.id for r in rows], _say, checkpoint)
        except Interrupted:
            raise Interrupted(
                f"interrupted: deleted {deleted} DEAD row(s) so far; run the same command again to finish"
            ) from None
    _say(f"deleted {deleted} DEAD row(s)")
    if deleted < len(rows):
        _say(f"{len(rows) - deleted} row(s) were no longer DEAD (redriven meanwhile) and were kept")
    return DONE


def _purge_letters(
    dead: DeadRowsAdmin,
    queue: DeadLetterQueueAdmin,
    rows: Sequence[DeadRow],
    max_letters: int,
    checkpoint: Deferred,
) -> None:
    """The letters of ``rows`` first: a purge stopped after them leaves DEAD rows a re-run deletes."""
    letters = _scan(queue, max_letters, checkpoint)
    deleted = 0
    try:
        found = dead.sort_letters(letters)
        ids = {r.id for r in rows}
        theirs = [x for x in found.letters[REDRIVABLE] if x.outbox_id in ids]
        deleted = _delete(queue, theirs, "of the rows to purge")
        if len(letters) >= max_letters:
            _say(
                f"read the limit of {max_letters} letter(s): letters of these rows further back stay "
                "(`outbox-relay dlq remove --stale` removes them after the purge)"
            )
    finally:
        _release(queue, letters, deleted)


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


# --- dlq ---------------------------------------------------------------------------------------


def _dlq(args: argparse.Namespace) -> int:
    dead, queue = _admins(True)
    assert queue is not None
    with Deferred() as checkpoint:
        return _dlq_letters(dead, queue, args, checkpoint)


def _dlq_letters(
    dead: DeadRowsAdmin, queue: DeadLetterQueueAdmin, args: argparse.Namespace, checkpoint: Deferred
) -> int:
    letters = _scan(queue, args.max, checkpoint)
    deleted = 0
    try:
        found = dead.sort_letters(letters)
        if args.action == "list":
            _list(found, args.json)
            return DONE if letters else NOTHING_TO_DO
        asked = ((STALE, args.stale), (UNMATCHED, args.unmatched), (MALFORMED, args.malformed))
        kinds = [kind for kind, wanted in asked if wanted]
        if not kinds:
            raise CommandError("say which letters to remove: --stale, --unmatched and/or --malformed")
        chosen = [x for k in kinds for x in found.letters[k]]
        _say(f"read {len(letters)} dead letter(s): {found.counts()}")
        if not chosen:
            _say(f"no {', '.join(kinds)} letters to remove")
            return NOTHING_TO_DO
        _list(Sorted({k: found.letters[k] if k in kinds else [] for k in KINDS}, {}), False)
        if not args.yes:
            _say(f"\n{len(chosen)} letter(s) would be removed; nothing was removed (add --yes)")
            return REFUSED
        deleted = _delete(queue, chosen, "")
        return DONE
    finally:
        _release(queue, letters, deleted)


def _list(found: Sorted, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "action": "dlq list",
                    "counts": {k: len(v) for k, v in found.letters.items()},
                    "letters": [
                        {
                            "message_id": x.message_id,
                            "kind": k,
                            "outbox_id": x.outbox_id,
                            "event_id": None if x.event_id is None else shown(x.event_id),
                            "problem": x.problem,
                        }
                        for k, v in found.letters.items()
                        for x in v
                    ],
                },
                indent=2,
            )
        )
        return
    shown_rows = [
        [
            x.message_id,
            k,
            x.outbox_id if x.outbox_id is not None else "-",
            shown(x.event_id or "-")[:40],
            x.problem or "",
        ]
        for k, v in found.letters.items()
        for x in v
    ]
    print(table(["MESSAGE ID", "KIND", "OUTBOX ID", "EVENT ID", "PROBLEM"], shown_rows[:SHOWN_ROWS]))
    if len(shown_rows) > SHOWN_ROWS:
        print(f"... and {len(shown_rows) - SHOWN_ROWS} more")
    print(f"{sum(len(v) for v in found.letters.values())} letter(s): {found.counts()}")
    _advise(found)


def _advise(found: Sorted) -> None:
    if found.letters[IN_FLIGHT]:
        _say(
            f"{len(found.letters[IN_FLIGHT])} letter(s) name rows a relay is working on now: "
            "left in the queue"
        )
    foreign = len(found.letters[UNMATCHED]) + len(found.letters[MALFORMED])
    if foreign:
        _say(
            f"{foreign} message(s) name no row of this outbox by both ids (unmatched, malformed): left "
            "in the queue; `outbox-relay dlq list` shows them, `outbox-relay dlq remove --unmatched "
            "--malformed` removes them"
        )


# --- unlease -----------------------------------------------------------------------------------


def _unlease(args: argparse.Namespace) -> int:
    dead, _ = _admins(False)
    shards = args.shards or []
    held = dead.holders(shards)
    operators = [h for h in held if h[1].startswith("operator ")]
    relays = [h for h in held if not h[1].startswith("operator ")]
    for shard, owner, left in relays:
        _say(
            f"shard {shard}: leased by {owner} for {left:.0f}s more: a relay's lease is left alone "
            "(it ends by itself)"
        )
    if not operators:
        _say("no operator lease to release")
        return REFUSED if relays else NOTHING_TO_DO
    released = dead.unlease(sorted({h[0] for h in operators}))
    _say(f"released {released} operator lease(s): {', '.join(f'shard {s} ({o})' for s, o, _ in operators)}")
    return DONE


# --- letters: read, delete, give back ----------------------------------------------------------


def _scan(queue: DeadLetterQueueAdmin, max_letters: int, checkpoint: Deferred) -> list[Letter]:
    """The letters, read once; an interrupt while reading gives them back and changes nothing."""
    pages = [0]

    def page(fresh: list[Letter]) -> None:
        pages[0] += len(fresh)
        if pages[0] % 1000 < len(fresh):
            _say(f"read {pages[0]} letter(s)...")

    try:
        letters = queue.scan(max_letters, time.monotonic() + SCAN_SECONDS, page, lambda: checkpoint.requested)
    except QueueError as exc:
        raise CommandFailed(f"{exc}; nothing was changed") from exc
    if checkpoint.requested:
        _release(queue, letters, 0)
        raise Interrupted("interrupted while reading the dead-letter queue; nothing was changed")
    return letters


def _delete(queue: DeadLetterQueueAdmin, letters: Sequence[Letter], what: str) -> int:
    if not letters:
        return 0
    try:
        result = queue.delete(letters)
    except QueueError as exc:
        raise CommandFailed(f"{exc}; the rows were not changed after it: run the command again") from exc
    _say(f"deleted {result.deleted} letter(s) from the dead-letter queue{f' ({what})' if what else ''}")
    if result.failed:
        raise CommandFailed(
            f"SQS did not delete {len(result.failed)} letter(s) ({result.failed[0][1]}); "
            "nothing after them was changed: run the command again"
        )
    return result.deleted


def _release(queue: DeadLetterQueueAdmin, letters: Sequence[Letter], deleted: int) -> None:
    """Every letter read and not deleted is visible again now (deleted ones are gone anyway)."""
    if len(letters) > deleted:
        missed = queue.release(letters)
        if missed > deleted:
            _say(
                f"{missed - deleted} letter(s) could not be made visible now; they are back within 2 minutes"
            )


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
    r.add_argument("--max-id", type=integer(1, MAX_ID), help="with --all: only rows up to this id")
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
    u.add_argument("--max-id", type=integer(1, MAX_ID), help="with --all: only rows up to this id")
    u.add_argument("--expect", type=integer(1, MAX_ID), help="with --all --yes: the count the preview showed")
    u.add_argument("--dlq", action="store_true", help="also delete their letters from the dead-letter queue")
    u.add_argument(
        "--max-letters",
        type=integer(1, 1_000_000),
        default=100_000,
        help="with --dlq: letters to read at most (default %(default)s)",
    )
    u.add_argument("--yes", action="store_true", help="really delete (otherwise only show what would go)")
    u.set_defaults(run=_purge)

    q = sub.add_parser("dlq", help="list the dead letters by what they name; remove stale or foreign ones")
    q.add_argument("action", choices=("list", "remove"))
    q.add_argument(
        "--max", type=integer(1, 1_000_000), default=10_000, help="letters to read (default %(default)s)"
    )
    q.add_argument("--stale", action="store_true", help="remove: letters whose rows are no longer DEAD")
    q.add_argument("--unmatched", action="store_true", help="remove: letters naming no row by both ids")
    q.add_argument("--malformed", action="store_true", help="remove: messages that are not letters")
    q.add_argument("--yes", action="store_true", help="remove: really remove (otherwise only show)")
    q.add_argument("--json", action="store_true", help="list: as JSON")
    q.set_defaults(run=_dlq)

    x = sub.add_parser("unlease", help="end leases operator commands left behind (never a relay's)")
    x.add_argument("--shards", type=integer_list, help="comma-separated shards (default: all)")
    x.set_defaults(run=_unlease)


def integer_list(text: str) -> list[int]:
    """Comma-separated shard numbers (the shard column is SMALLINT UNSIGNED)."""
    parse = integer(0, 65_535)
    try:
        shards = sorted({parse(part) for part in text.split(",") if part.strip()})
    except argparse.ArgumentTypeError:
        shards = []
    if not shards:
        raise argparse.ArgumentTypeError(f"expected comma-separated shard numbers, got {text!r}")
    return shards


__all__ = ["KINDS", "add_parsers"]
