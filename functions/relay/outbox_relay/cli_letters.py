"""``dlq`` and ``unlease``, and what every command that reads dead letters shares.

Letters are read once per command (``scan``), deleted only after what they stand for is done
(``delete``, per-message failures reported), and every letter read and not deleted is made
visible again before the command ends (``release``), also when it is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .admin_dead import (
    KINDS,
    MALFORMED,
    OPERATOR_PREFIX,
    PENDING,
    STALE,
    UNMATCHED,
    DeadRowsAdmin,
    Interrupted,
    Sorted,
    operator_host,
)
from .cli_common import (
    DONE,
    NOTHING_TO_DO,
    REFUSED,
    CommandFailed,
    UsageError,
    add_timeout,
    command_deadline,
    dead_letter_queue,
    integer,
    printable,
    store_runtime,
    table,
    whole_numbers,
)
from .dlq_admin import KEEP_EVERY_SECONDS, DeadLetterQueueAdmin, Letter, QueueError
from .interrupts import Deferred

SHOWN_ROWS = 50
# How long a command may spend reading the queue.
SCAN_SECONDS = 300.0
# The bound of a command that reads letters and changes rows (--timeout's default).
LETTER_COMMAND_SECONDS = 900.0


def admins(args: argparse.Namespace, need_queue: bool) -> tuple[DeadRowsAdmin, DeadLetterQueueAdmin | None]:
    """The database alone (OUTBOX_DB_*), and the queue (DLQ_QUEUE_URL) when the command uses it."""
    runtime = store_runtime(command_deadline(args))
    dead = DeadRowsAdmin(runtime.store, runtime.config.retention)
    return dead, dead_letter_queue() if need_queue else None


def say(text: str) -> None:
    """A progress line; a reader that went away (``| head``) does not stop the work."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class Held:
    """The letters a command has read and neither deleted nor given back.  Kept out of sight
    (extended every KEEP_EVERY_SECONDS, at checkpoints and while reading) for as long as the
    command works on them: no other reader acts on them meanwhile, and a long read never meets
    its own letters again."""

    def __init__(self, queue: DeadLetterQueueAdmin, interrupts: Deferred) -> None:
        self.queue, self.interrupts = queue, interrupts
        self.letters: dict[str, Letter] = {}
        self.kept_at = time.monotonic()

    def add(self, fresh: Sequence[Letter]) -> None:
        self.letters.update((x.message_id, x) for x in fresh)
        self.tick()

    def gone(self, letters: Sequence[Letter]) -> None:
        for x in letters:
            self.letters.pop(x.message_id, None)

    def tick(self) -> None:
        if self.letters and time.monotonic() - self.kept_at >= KEEP_EVERY_SECONDS:
            self.kept_at = time.monotonic()
            with contextlib.suppress(QueueError):  # they come back by themselves: a re-run sees them
                self.queue.keep(list(self.letters.values()))

    def checkpoint(self) -> None:
        self.tick()
        self.interrupts()


# --- dlq ---------------------------------------------------------------------------------------


def _dlq(args: argparse.Namespace) -> int:
    asked = ((STALE, args.stale), (UNMATCHED, args.unmatched), (MALFORMED, args.malformed))
    kinds = [kind for kind, wanted in asked if wanted]
    if args.action == "remove" and not kinds:
        raise UsageError("dlq remove: say which letters: --stale, --unmatched and/or --malformed")
    dead, queue = admins(args, True)
    assert queue is not None
    with Deferred() as interrupts:
        held = Held(queue, interrupts)
        try:
            return _dlq_letters(dead, held, args, kinds)
        finally:
            release(held)


def _dlq_letters(dead: DeadRowsAdmin, held: Held, args: argparse.Namespace, kinds: list[str]) -> int:
    letters = scan(held, args.max)
    found = dead.sort_letters(letters)
    if args.action == "list":
        _list(found, args.json)
        return DONE if letters else NOTHING_TO_DO
    chosen = [x for k in kinds for x in found.letters[k]]
    say(f"read {len(letters)} dead letter(s): {found.counts()}")
    if not chosen:
        say(f"no {', '.join(kinds)} letters to remove")
        return NOTHING_TO_DO
    _list(Sorted({k: found.letters[k] if k in kinds else [] for k in KINDS}, {}), False)
    if not args.yes:
        say(f"\n{len(chosen)} letter(s) would be removed; nothing was removed (add --yes)")
        return REFUSED
    delete(held, chosen, "")
    return DONE


def _list(found: Sorted, as_json: bool) -> None:
    if as_json:
        say(
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
                            "event_id": x.event_id,
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
            printable(x.message_id),
            k,
            x.outbox_id if x.outbox_id is not None else "-",
            printable(x.event_id or "-")[:60],
            x.problem or "",
        ]
        for k, v in found.letters.items()
        for x in v
    ]
    say(table(["MESSAGE ID", "KIND", "OUTBOX ID", "EVENT ID", "PROBLEM"], shown_rows[:SHOWN_ROWS]))
    if len(shown_rows) > SHOWN_ROWS:
        say(f"... and {len(shown_rows) - SHOWN_ROWS} more")
    say(f"{sum(len(v) for v in found.letters.values())} letter(s): {found.counts()}")
    advise(found)


def advise(found: Sorted) -> None:
    if found.letters[PENDING]:
        say(
            f"{len(found.letters[PENDING])} letter(s) name PENDING rows (a relay may be dead-lettering "
            "them now, or they were redriven and are not published yet): left in the queue"
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
    dead, _ = admins(args, False)
    held = dead.holders(args.shards or [])
    free: list[tuple[int, str]] = []
    kept = 0
    for shard, owner, left in held:
        why = _still_used(owner, args.force)
        if why is None:
            free.append((shard, owner))
        else:
            kept += 1
            say(f"shard {shard}: leased by {printable(owner)} for {left:.0f}s more: {why}")
    if not free:
        say("no operator lease to release")
        return REFUSED if kept else NOTHING_TO_DO
    released = dead.unlease(sorted({s for s, _ in free}))
    say(f"released {released} operator lease(s): {', '.join(f'shard {s} ({printable(o)})' for s, o in free)}")
    return DONE


def _still_used(owner: str, force: bool) -> str | None:
    """Why a lease must stay (None: it may go).  A relay's lease never goes; an operator's when
    its command is gone: checked on this host, taken on trust (``--force``) for another."""
    if not owner.startswith(OPERATOR_PREFIX):
        return "a relay's lease is left alone (it ends by itself)"
    parts = owner.split()  # operator <command> <host> pid <pid>
    if len(parts) == 5 and parts[3] == "pid" and parts[4].isdigit():
        if parts[2] != operator_host():
            return None if force else "an operator command on another host: add --force if it is gone"
        try:
            os.kill(int(parts[4]), 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return f"its command is still running here (pid {parts[4]})"
    return None if force else "an operator lease of unknown form: add --force"


# --- letters: read, delete, give back ----------------------------------------------------------


def scan(held: Held, max_letters: int) -> list[Letter]:
    """The letters, read once and held; an interrupt while reading changes nothing."""
    pages = [0]

    def page(fresh: list[Letter]) -> None:
        held.add(fresh)
        pages[0] += len(fresh)
        if pages[0] % 1000 < len(fresh):
            say(f"read {pages[0]} letter(s)...")

    try:
        letters = held.queue.scan(
            max_letters, time.monotonic() + SCAN_SECONDS, page, lambda: held.interrupts.requested
        )
    except QueueError as exc:
        raise CommandFailed(f"{exc}; nothing was changed") from exc
    held.add(letters)
    if held.interrupts.requested:
        raise Interrupted("interrupted while reading the dead-letter queue; nothing was changed")
    return letters


def delete(held: Held, letters: Sequence[Letter], what: str) -> int:
    if not letters:
        return 0
    try:
        result = held.queue.delete(letters)
    except QueueError as exc:
        raise CommandFailed(f"{exc}; nothing after it was changed: run the command again") from exc
    failed = {x.message_id for x, _ in result.failed}
    held.gone([x for x in letters if x.message_id not in failed])
    say(f"deleted {result.deleted} letter(s) from the dead-letter queue{f' ({what})' if what else ''}")
    if result.failed:
        raise CommandFailed(
            f"SQS did not delete {len(result.failed)} letter(s) ({result.failed[0][1]}); "
            "nothing after them was changed: run the command again"
        )
    return result.deleted


def release(held: Held) -> None:
    """Every letter read and not deleted is visible again now."""
    if held.letters:
        missed = held.queue.release(list(held.letters.values()))
        held.letters.clear()
        if missed:
            say(f"{missed} letter(s) could not be made visible now; they are back within 2 minutes")


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
    add_timeout(q, LETTER_COMMAND_SECONDS)
    q.set_defaults(run=_dlq)

    x = sub.add_parser("unlease", help="end leases operator commands left behind (never a relay's)")
    # The shard column is SMALLINT UNSIGNED.
    x.add_argument(
        "--shards",
        type=whole_numbers("shard numbers", 0, 65_535),
        help="comma-separated shards (default: all)",
    )
    x.add_argument("--force", action="store_true", help="also leases of operator commands on other hosts")
    add_timeout(x)
    x.set_defaults(run=_unlease)
