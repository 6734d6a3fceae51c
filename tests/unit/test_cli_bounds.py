"""The operator commands end in bounded time, quietly and in one line (no stack: a database that
accepts TCP and never answers is a listening socket of the test's own on 127.0.0.1)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

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
