"""The operator commands end in bounded time, quietly and in one line (no stack: a database that
accepts TCP and never answers is a listening socket of the test's own on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from outbox_relay import cli
from outbox_relay.cli_common import FAILED, USAGE
from tests.unit.hostile import check, run

DATABASE_ONLY = {
    "OUTBOX_DB_HOST": "127.0.0.1",
    "OUTBOX_DB_NAME": "outbox",
    "OUTBOX_DB_USER": "relay",
    "OUTBOX_DB_PASSWORD": "relay",
}
# For invoke (the function's whole configuration); neither is reached when the database is not.
RELAY = {**DATABASE_ONLY, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "DLQ_QUEUE_URL": "http://127.0.0.1:9/q"}


@pytest.fixture
def silent() -> Iterator[socket.socket]:
    """A "database" that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


def _port(listener: socket.socket) -> str:
    return str(listener.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "done"),
    [
        (["status", "--timeout", "3"], "nothing was changed"),
        (["dry-run", "--timeout", "2"], "nothing was leased, written or sent"),
        (["janitor", "--timeout", "2"], "0 published and 0 dead row(s) deleted in 0 batch(es) before that"),
    ],
)
def test_a_database_that_never_answers_fails_the_command_at_its_timeout_in_one_line(
    silent: socket.socket, argv: list[str], done: str
) -> None:
    timeout = float(argv[-1])
    started = time.monotonic()
    # Neither Kafka nor the dead-letter queue is configured: these commands do not use them.
    outcome = run(argv, {**DATABASE_ONLY, "OUTBOX_DB_PORT": _port(silent)})
    took = time.monotonic() - started
    check(outcome, lambda code: code == FAILED)
    assert timeout - 0.5 <= took <= timeout + 1.5, took
    assert outcome.err.startswith(f"outbox-relay {argv[0]}: stopped at --timeout ({timeout:g} s): ")
    assert f"database 127.0.0.1:{_port(silent)}: list shards: (2013) Lost connection" in outcome.err
    assert outcome.err.endswith(f"; {done}\n")


def test_invoke_ends_within_its_timeout_too(silent: socket.socket) -> None:
    started = time.monotonic()
    outcome = run(["invoke", "--timeout", "3"], {**RELAY, "OUTBOX_DB_PORT": _port(silent)})
    assert time.monotonic() - started <= 4.5
    check(outcome, lambda code: code == FAILED)
    assert outcome.err.startswith("outbox-relay invoke: the run failed (database_unavailable): ")
    assert '"stopped_by": "database_unavailable"' in outcome.out


def test_a_refused_connection_is_one_line_saying_how_often_it_was_tried() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        outcome = run(["status"], {**DATABASE_ONLY, "OUTBOX_DB_PORT": _port(closed)})
    check(outcome, lambda code: code == FAILED)
    assert "list shards: (2003) Can't connect" in outcome.err
    assert "(tried 4 times); nothing was changed" in outcome.err
    assert "database retry" not in outcome.err


def test_invoke_refuses_a_timeout_that_leaves_the_run_no_time() -> None:
    outcome = run(["invoke", "--timeout", "1.5"], {**RELAY, "OUTBOX_STOP_MARGIN_SECONDS": "2"})
    check(outcome, lambda code: code == USAGE)
    assert outcome.err == (
        "outbox-relay invoke: --timeout 1.5 leaves the run no time: it stops "
        "OUTBOX_STOP_MARGIN_SECONDS=2 s before the end\n"
    )
    assert outcome.out == ""


def test_ctrl_c_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_status", interrupted)
    outcome = run(["status"])
    assert (outcome.code, outcome.err) == (FAILED, "outbox-relay status: interrupted\n")
    monkeypatch.setattr(cli, "parser", interrupted)
    outcome = run(["status"])
    assert (outcome.code, outcome.err) == (FAILED, "outbox-relay: interrupted\n")


def test_a_bug_is_still_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> int:
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setattr(cli, "_status", broken)
    outcome = run(["status"])
    assert (outcome.code, outcome.err) == (
        FAILED,
        "outbox-relay status: unexpected error, please report it: "
        "TypeError: unsupported operand\\nsecond line\n",
    )


def _command(argv: list[str], env: dict[str, str], stdout: int) -> subprocess.Popen[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "KAFKA_", "DLQ_", "PYTHONUNBUF"))
    }
    return subprocess.Popen(
        [sys.executable, "-m", "outbox_relay.cli", *argv],
        env={**clean, **env},
        stderr=subprocess.PIPE,
        stdout=stdout,
        text=True,
        # A shell that starts a job in the background (no job control) ignores SIGINT for it, and
        # Python keeps an ignored SIGINT ignored: give the command the terminal's default.
        preexec_fn=_default_sigint,  # noqa: PLW1509 - it only resets one signal before exec
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_waiting_for_the_database_is_one_line(silent: socket.socket) -> None:
    command = _command(
        ["status", "--timeout", "60"],
        {**DATABASE_ONLY, "OUTBOX_DB_PORT": _port(silent)},
        stdout=subprocess.PIPE,
    )
    silent.settimeout(30)
    conn, _ = silent.accept()  # the command is in main, waiting for the greeting
    with conn:
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=10)
    assert (command.returncode, out, err) == (FAILED, "", "outbox-relay status: interrupted\n")


@pytest.mark.parametrize("unbuffered", ["", "1"])  # a print fails, or the flush at the end
def test_a_closed_pipe_ends_the_command_quietly(unbuffered: str) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte (`outbox-relay --help | true`)
    try:
        command = _command(["--help"], {"PYTHONUNBUFFERED": unbuffered}, stdout=write)
    finally:
        os.close(write)
    _, err = command.communicate(timeout=30)
    assert (command.returncode, err) == (0, "")


@pytest.mark.parametrize(
    "argv",
    [
        ["redrive", "--ids", "1", "--timeout", "2"],
        ["purge", "--ids", "1", "--yes", "--timeout", "2"],
        ["purge", "--all", "--timeout", "2"],
        ["unlease", "--timeout", "2"],
    ],
)
def test_the_dead_row_commands_end_at_their_timeout_too(silent: socket.socket, argv: list[str]) -> None:
    started = time.monotonic()
    # The database alone: without --from-dlq or --dlq they need no queue either.
    outcome = run(argv, {**DATABASE_ONLY, "OUTBOX_DB_PORT": _port(silent)})
    assert time.monotonic() - started <= 4.0
    check(outcome, lambda code: code == FAILED)
    assert outcome.err.startswith(f"outbox-relay {argv[0]}: ")


def test_migrate_against_an_unreachable_database_failed_not_refused() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        outcome = run(["migrate"], {**DATABASE_ONLY, "OUTBOX_DB_PORT": _port(closed)})
    check(outcome, lambda code: code == FAILED)
    assert "database error: (2003," in outcome.err and outcome.err.endswith("; run migrate again\n")


def test_migrate_ends_at_its_timeout_against_a_database_that_never_answers(silent: socket.socket) -> None:
    started = time.monotonic()
    outcome = run(["migrate", "--timeout", "2"], {**DATABASE_ONLY, "OUTBOX_DB_PORT": _port(silent)})
    assert time.monotonic() - started <= 4.0
    check(outcome, lambda code: code == FAILED)
    assert "database error: (2013," in outcome.err
