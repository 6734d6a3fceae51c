"""``dlq`` and ``unlease``, and what every command that reads dead letters shares.

Letters are read once per command (``scan``), deleted only after what they stand for is done
(``delete``, per-message failures reported), and every letter read and not deleted is made
visible again before the command ends (``release``), also when it is interrupted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from .admin_dead import IN_FLIGHT, KINDS, MALFORMED, STALE, UNMATCHED, DeadRowsAdmin, Interrupted, Sorted
from .cli_common import (
    DONE,
    NOTHING_TO_DO,
    REFUSED,
    CommandError,
    CommandFailed,
    integer,
    relay_runtime,
    table,
)
from .dlq_admin import DeadLetterQueueAdmin, Letter, QueueError
from .interrupts import Deferred
from .rowtext import shown

SHOWN_ROWS = 50
# How long a command may spend reading the queue.
SCAN_SECONDS = 300.0


def admins(need_queue: bool) -> tuple[DeadRowsAdmin, DeadLetterQueueAdmin | None]:
    runtime = relay_runtime()
    store = runtime.admin().store
    dead = DeadRowsAdmin(store, runtime.config.retention)
    if not need_queue:
        return dead, None
    from .aws_clients import sqs_client

    return dead, DeadLetterQueueAdmin(sqs_client, runtime.config.dlq_queue_url)


def say(text: str) -> None:
    print(text, flush=True)


# --- dlq ---------------------------------------------------------------------------------------


def _dlq(args: argparse.Namespace) -> int:
    dead, queue = admins(True)
    assert queue is not None
    with Deferred() as checkpoint:
        return _dlq_letters(dead, queue, args, checkpoint)


def _dlq_letters(
    dead: DeadRowsAdmin, queue: DeadLetterQueueAdmin, args: argparse.Namespace, checkpoint: Deferred
) -> int:
    letters = scan(queue, args.max, checkpoint)
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
        say(f"read {len(letters)} dead letter(s): {found.counts()}")
        if not chosen:
            say(f"no {', '.join(kinds)} letters to remove")
            return NOTHING_TO_DO
        _list(Sorted({k: found.letters[k] if k in kinds else [] for k in KINDS}, {}), False)
        if not args.yes:
            say(f"\n{len(chosen)} letter(s) would be removed; nothing was removed (add --yes)")
            return REFUSED
        deleted = delete(queue, chosen, "")
        return DONE
    finally:
        release(queue, letters, deleted)


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
    advise(found)


def advise(found: Sorted) -> None:
    if found.letters[IN_FLIGHT]:
        say(
            f"{len(found.letters[IN_FLIGHT])} letter(s) name rows a relay is working on now: "
            "left in the queue"
        )
    foreign = len(found.letters[UNMATCHED]) + len(found.letters[MALFORMED])
    if foreign:
        say(
            f"{foreign} message(s) name no row of this outbox by both ids (unmatched, malformed): left "
            "in the queue; `outbox-relay dlq list` shows them, `outbox-relay dlq remove --unmatched "
            "--malformed` removes them"
        )


# --- unlease -----------------------------------------------------------------------------------


def _unlease(args: argparse.Namespace) -> int:
    dead, _ = admins(False)
    shards = args.shards or []
    held = dead.holders(shards)
    operators = [h for h in held if h[1].startswith("operator ")]
    relays = [h for h in held if not h[1].startswith("operator ")]
    for shard, owner, left in relays:
        say(
            f"shard {shard}: leased by {owner} for {left:.0f}s more: a relay's lease is left alone "
            "(it ends by itself)"
        )
    if not operators:
        say("no operator lease to release")
        return REFUSED if relays else NOTHING_TO_DO
    released = dead.unlease(sorted({h[0] for h in operators}))
    say(f"released {released} operator lease(s): {', '.join(f'shard {s} ({o})' for s, o, _ in operators)}")
    return DONE


# --- letters: read, delete, give back ----------------------------------------------------------


def scan(queue: DeadLetterQueueAdmin, max_letters: int, checkpoint: Deferred) -> list[Letter]:
    """The letters, read once; an interrupt while reading gives them back and changes nothing."""
    pages = [0]

    def page(fresh: list[Letter]) -> None:
        pages[0] += len(fresh)
        if pages[0] % 1000 < len(fresh):
            say(f"read {pages[0]} letter(s)...")

    try:
        letters = queue.scan(max_letters, time.monotonic() + SCAN_SECONDS, page, lambda: checkpoint.requested)
    except QueueError as exc:
        raise CommandFailed(f"{exc}; nothing was changed") from exc
    if checkpoint.requested:
        release(queue, letters, 0)
        raise Interrupted("interrupted while reading the dead-letter queue; nothing was changed")
    return letters


def delete(queue: DeadLetterQueueAdmin, letters: Sequence[Letter], what: str) -> int:
    if not letters:
        return 0
    try:
        result = queue.delete(letters)
    except QueueError as exc:
        raise CommandFailed(f"{exc}; the rows were not changed after it: run the command again") from exc
    say(f"deleted {result.deleted} letter(s) from the dead-letter queue{f' ({what})' if what else ''}")
    if result.failed:
        raise CommandFailed(
            f"SQS did not delete {len(result.failed)} letter(s) ({result.failed[0][1]}); "
            "nothing after them was changed: run the command again"
        )
    return result.deleted


def release(queue: DeadLetterQueueAdmin, letters: Sequence[Letter], deleted: int) -> None:
    """Every letter read and not deleted is visible again now (deleted ones are gone anyway)."""
    if len(letters) > deleted:
        missed = queue.release(letters)
        if missed > deleted:
            say(f"{missed - deleted} letter(s) could not be made visible now; they are back within 2 minutes")


# --- the parsers -------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
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
