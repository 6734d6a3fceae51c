"""What the operator commands share: their errors, option types and output helpers."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .config import load_config, load_dlq_queue_url, load_store_config
from .rowtext import shown
from .sql import MAX_OUTBOX_ID

if TYPE_CHECKING:  # the relay extra's modules, imported when a command runs
    from .dlq_admin import DeadLetterQueueAdmin
    from .runtime import StoreRuntime

# Exit statuses, distinct so that a script can tell them apart (README, "Exit codes").
DONE = 0
FAILED = 1  # a dependency failed or the command was cut short; the message says what was done
USAGE = 2  # a bad option or setting (argparse's own status)
REFUSED = 3  # refused, or only previewed: nothing was changed
NOTHING_TO_DO = 4  # nothing matched: nothing was changed

# Plain decimal numbers only: no `1_0`, `0x10`, `nan`, `inf` (which int() and float() accept).
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Longer than any value in range: int() refuses 4,300+ digits with its own message.
_MAX_DIGITS = 30
# What an error line quotes of an operator's text at most.
_QUOTED = 40

# The bound on a whole command (`--timeout`): connects, statements and retries fit inside it.
DEFAULT_TIMEOUT_SECONDS = 60.0
MIN_TIMEOUT_SECONDS = 1.0
MAX_TIMEOUT_SECONDS = 86_400.0


def one_line(text: str) -> str:
    """``text`` with its control characters escaped: an error is one line, whatever was typed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(text: str) -> str:
    """An operator's text as an error line quotes it: escaped, and cut when long."""
    return repr(text) if len(text) <= _QUOTED else repr(text[:_QUOTED]) + f"... ({len(text)} characters)"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (not the usage text, then the error)."""

    def error(self, message: str) -> NoReturn:
        text = one_line(message)
        if len(text) > 300:
            text = text[:300] + "..."
        self.exit(USAGE, f"{self.prog}: {text} (see {self.prog} --help)\n")


def add_timeout(
    parser: argparse.ArgumentParser,
    default: float | None = DEFAULT_TIMEOUT_SECONDS,
    help: str = "give up after this long, exit 1 (default %(default)s)",
) -> None:
    """The option bounding the whole command (a database that never answers included)."""
    parser.add_argument(
        "--timeout",
        type=seconds(MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS),
        default=default,
        metavar="SECONDS",
        help=help,
    )


def command_deadline(args: argparse.Namespace) -> float | None:
    """When the command's ``--timeout`` runs out (monotonic), counted from main's start."""
    timeout = getattr(args, "timeout", None)
    return None if timeout is None else float(args.started + timeout)


class CommandError(Exception):
    """Refused before anything changed (exit status REFUSED)."""


class UsageError(Exception):
    """Options that do not go together (exit status USAGE), found after argparse."""


class CommandFailed(Exception):
    """A dependency failed part-way (exit status FAILED); the message says what was done."""


def integer(low: int, high: int) -> Callable[[str], int]:
    """An option type: a plain decimal integer in [low, high]."""

    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text.strip()):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {quoted(text)}")
        if len(text.strip().lstrip("+-").lstrip("0")) > _MAX_DIGITS or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {quoted(text)}"
            )
        return int(text)

    return parse


def seconds(low: float, high: float, *, above_low: bool = False) -> Callable[[str], float]:
    """An option type: a finite plain decimal number of seconds in [low, high] (or (low, high])."""

    def parse(text: str) -> float:
        if not _DECIMAL.fullmatch(text.strip()):
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {quoted(text)}")
        value = float(text)  # finite or +-inf (1e999): no NaN matches _DECIMAL
        if not (low < value if above_low else low <= value) or value > high:
            bound = "above" if above_low else "from"
            raise argparse.ArgumentTypeError(
                f"expected a number of seconds {bound} {low:g} up to {high:g}, got {quoted(text)}"
            )
        return value

    return parse


# Characters that would act on the operator's terminal rather than show: C0 and C1 controls, DEL,
# line and paragraph separators, and the bidirectional overrides that reorder what follows.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` from a row or a letter, safe to print: bytes that are not UTF-8 as ``\\xNN``
    (rowtext.shown), and characters that would act on the terminal as their escapes."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), shown(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows) for i in range(len(headers))
    ]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def relay_runtime() -> Any:
    """The Lambda's runtime (every setting required: Kafka, the dead-letter queue)."""
    from .runtime import runtime_for

    return runtime_for(load_config(os.environ))


def store_runtime(deadline: float | None = None) -> StoreRuntime:
    """The database alone (no Kafka or dead-letter queue settings needed), its connects,
    statements and retries ended by ``deadline`` (monotonic; see :func:`command_deadline`)."""
    from .runtime import StoreRuntime
    from .store_mysql import PAST_DEADLINE_SECONDS

    runtime = StoreRuntime(load_store_config(os.environ))
    if deadline is not None:
        # The store lets a statement run PAST_DEADLINE_SECONDS past its deadline.
        runtime.bound(deadline - PAST_DEADLINE_SECONDS)
    return runtime


def dead_letter_queue() -> DeadLetterQueueAdmin:
    """The dead-letter queue as operators read it (``DLQ_QUEUE_URL``, required here only), for
    ``--from-dlq``, ``--dlq`` and ``dlq``; ``.queue_url`` names it."""
    from . import aws_clients
    from .dlq_admin import DeadLetterQueueAdmin

    return DeadLetterQueueAdmin(aws_clients.sqs_client, load_dlq_queue_url(os.environ))


def store_failed(args: argparse.Namespace, runtime: StoreRuntime, exc: Exception, done: str) -> CommandFailed:
    """A database failure as the command's one line: where, what, whether ``--timeout`` cut it,
    and ``done`` (what the command did or left unchanged)."""
    db = runtime.config.database
    deadline = command_deadline(args)
    cut = ""
    if deadline is not None and time.monotonic() >= deadline - 1.0:  # the store's own slack, and some
        cut = f"stopped at --timeout ({args.timeout:g} s): "
    return CommandFailed(f"{cut}database {db.host}:{db.port}: {exc}{retries.told(exc)}; {done}")


class RetryLog(logging.Handler):
    """The store's "database retry" warnings, kept quiet while the command runs: the command's
    error line says how often its failing operation was tried.  Other warnings: one line each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.command = ""
        self.operation: str | None = None
        self.tries = 0

    def emit(self, record: logging.LogRecord) -> None:
        operation = getattr(record, "operation", None)
        if record.getMessage() == "database retry" and isinstance(operation, str):
            self.tries = self.tries + 1 if operation == self.operation else 1
            self.operation = operation
            return
        print(f"outbox-relay {self.command}: {one_line(record.getMessage())}", file=sys.stderr)

    def told(self, exc: Exception) -> str:
        """How often the last operation retried was tried: each failed try but the last one cut
        short (a deadline, an error not worth retrying) is logged; all are once RETRIES failed."""
        from .store_mysql import RETRIES

        if self.operation is None or not str(exc).startswith(f"{self.operation}:"):
            return ""
        tries = self.tries if self.tries >= RETRIES else self.tries + 1
        return f" (tried {tries} times)" if tries > 1 else ""

    def install(self, command: str) -> None:
        self.command, self.operation, self.tries = command, None, 0
        logging.getLogger("outbox_relay").addHandler(self)

    def remove(self) -> None:
        logging.getLogger("outbox_relay").removeHandler(self)


retries = RetryLog()


def whole_numbers(what: str, low: int, high: int) -> Callable[[str], list[int]]:
    """An option type: comma-separated plain decimal integers in [low, high], sorted, once each."""

    def parse(text: str) -> list[int]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts or not all(_INTEGER.fullmatch(part) for part in parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {quoted(text)}")
        too_long = any(len(part.lstrip("+-").lstrip("0")) > _MAX_DIGITS for part in parts)
        values = [] if too_long else sorted({int(part) for part in parts})
        if not values or values[0] < low or values[-1] > high:
            raise argparse.ArgumentTypeError(f"expected {what} from {low} to {high}, got {quoted(text)}")
        return values

    return parse


outbox_ids = whole_numbers("outbox ids", 1, MAX_OUTBOX_ID)
