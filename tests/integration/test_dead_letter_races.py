"""The dead-letter tools beside a relay and other readers (real MariaDB, moto SQS): each test is
a hole an adversarial review found, shown failing on the code before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from outbox_relay import admin_dead, cli_letters, dlq_admin
from outbox_relay.admin_dead import DeadRowsAdmin
from outbox_relay.admin_mysql import AdminError
from outbox_relay.cli_common import DONE, FAILED, NOTHING_TO_DO, REFUSED, USAGE, printable
from outbox_relay.dlq_admin import parse_letter
from tests import support
from tests.integration.test_dead_letter_tools import (
    SQS,
    _cli,
    _counts,
    _dead,
    _letter,
    _letters,
    _send,
    _status,
)


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq_admin, "RECEIVE_WAIT_SECONDS", 0)


def test_a_letter_of_a_pending_row_is_never_spent(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The relay sends a letter, then marks the row DEAD; a finalize that failed leaves the row
    PENDING, its shard free, and the letter sent: the next run marks it DEAD without sending
    again.  Deleting that letter as spent would leave a DEAD row without one."""
    database.insert([support.Event("acct", "A", "e", b"{}")])
    (row_id, event_id) = database.query("SELECT id, event_id FROM outbox")[0]
    _send(dlq, [_letter(int(row_id), str(event_id))])

    assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq") == NOTHING_TO_DO
    assert "1 letter(s) name PENDING rows" in capsys.readouterr().out
    assert _cli(relay_env, monkeypatch, "dlq", "remove", "--stale", "--yes") == NOTHING_TO_DO
    assert _counts(dlq) == (1, 0), "the letter stays"
    # Once the row is published the letter is spent, and goes.
    database.query("UPDATE outbox SET status = 'PUBLISHED'")
    assert _cli(relay_env, monkeypatch, "dlq", "remove", "--stale", "--yes") == DONE
    assert _counts(dlq) == (0, 0)


def test_shards_taken_first_are_kept_while_the_redrive_waits_for_the_others(
    database: support.Database, relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_dead, "OPERATOR_LEASE_SECONDS", 1.0)
    rows = _dead(database, "A", 1) + _dead(database, "B", 1)
    first, second = (int(s) for (s,) in database.query("SELECT shard FROM outbox ORDER BY id"))
    assert first != second
    # A relay holds the second shard for 3 s, and takes the first the moment it is free.
    database.query(
        "UPDATE outbox_shard SET lease_owner = 'relay-1', lease_token = 'rrrrrrrrrrrrrrrr',"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 3 SECOND WHERE shard = %s",
        second,
    )
    stop = threading.Event()

    def relay() -> None:
        while not stop.is_set():
            database.query(
                "UPDATE outbox_shard SET lease_owner = 'relay-2', lease_token = 'ssssssssssssssss',"
                " lease_until = UTC_TIMESTAMP(6) + INTERVAL 60 SECOND"
                " WHERE shard = %s AND lease_until <= UTC_TIMESTAMP(6)",
                first,
            )
            time.sleep(0.05)

    thread = threading.Thread(target=relay)
    thread.start()
    try:
        ids = ",".join(str(i) for i, _ in rows)
        assert _cli(relay_env, monkeypatch, "redrive", "--ids", ids, "--wait", "10") == DONE
    finally:
        stop.set()
        thread.join()
    assert database.status_counts() == {"PENDING": 2}


def test_a_redrive_that_fails_part_way_says_what_it_did_and_deletes_the_letters_of_the_rows_done(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(admin_dead, "BATCH_ROWS", 1)
    rows = _dead(database, "A", 1) + _dead(database, "B", 1) + _dead(database, "C", 1)
    _send(dlq, [_letter(*r) for r in rows])
    batch = DeadRowsAdmin._redrive_batch
    calls = [0]

    def second_fails(self: DeadRowsAdmin, *args: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise AdminError("lost the shard lease while redriving; this batch was not changed")
        batch(self, *args)

    monkeypatch.setattr(DeadRowsAdmin, "_redrive_batch", second_fails)
    assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq", "--wait", "5") == FAILED
    err = capsys.readouterr().err
    assert "before it redrove 1 event(s) of 1 aggregate(s)" in err, err
    assert [_status(database, i) for i, _ in rows] == ["PENDING", "DEAD", "DEAD"]
    named = {x["outbox_id"] for x in _letters(dlq)}
    assert named == {rows[1][0], rows[2][0]}, "the redriven row's letter went, the others stay"
    # A re-run finishes it.
    monkeypatch.setattr(DeadRowsAdmin, "_redrive_batch", batch)
    assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq", "--wait", "5") == DONE
    assert database.status_counts() == {"PENDING": 3} and _counts(dlq) == (0, 0)


def test_purge_keeps_a_row_whose_letter_another_reader_holds_out_of_sight(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (seen,) = _dead(database, "A", 1)
    (hidden,) = _dead(database, "B", 1)
    _send(dlq, [_letter(*hidden)])
    SQS.receive_message(QueueUrl=dlq.url, MaxNumberOfMessages=10, VisibilityTimeout=3)  # someone else
    _send(dlq, [_letter(*seen)])

    ids = f"{seen[0]},{hidden[0]}"
    assert _cli(relay_env, monkeypatch, "purge", "--ids", ids, "--dlq", "--yes") == FAILED
    assert f"1 row(s) kept (ids {hidden[0]})" in capsys.readouterr().err
    assert [_status(database, i) for i in (seen[0], hidden[0])] == [None, "DEAD"]
    time.sleep(3.5)  # the other reader's visibility ends
    assert _cli(relay_env, monkeypatch, "purge", "--ids", ids, "--dlq", "--yes") == DONE
    assert database.status_counts() == {} and _counts(dlq) == (0, 0)


def test_a_reader_that_goes_away_does_not_stop_a_redrive_half_way(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    for aggregate in "ABCD":
        _dead(database, aggregate, 1)
    code = (
        "import sys; from outbox_relay import admin_dead, cli; admin_dead.BATCH_ROWS = 1; "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "redrive", "--all", "--wait", "5"],
        env={**relay_env, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # `| head -1`
    assert process.wait(timeout=60) == DONE, process.stderr.read()
    assert database.status_counts() == {"PENDING": 4}, "every batch done"


def test_letters_read_stay_out_of_sight_while_the_command_works_on_them(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dlq_admin, "VISIBILITY_SECONDS", 2)
    monkeypatch.setattr(cli_letters, "KEEP_EVERY_SECONDS", 0.5)
    (row,) = _dead(database, "A", 1)
    _send(dlq, [_letter(*row), "not a letter"])
    shard = int(database.query("SELECT shard FROM outbox")[0][0])
    database.query(  # a relay holds the shard for 5 s: the redrive waits, holding the letters
        "UPDATE outbox_shard SET lease_owner = 'relay-1', lease_token = 'rrrrrrrrrrrrrrrr',"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 5 SECOND WHERE shard = %s",
        shard,
    )
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(_counts(dlq)[0])
            time.sleep(0.2)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq", "--wait", "10") == DONE
    finally:
        stop.set()
        thread.join()
    assert max(seen[2:-2]) == 0, f"a letter became visible while held: {seen}"
    assert _counts(dlq) == (1, 0), "the malformed one is given back at the end"


def test_dlq_remove_without_a_kind_is_a_usage_error_before_reading(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _send(dlq, ["x"])
    assert _cli(relay_env, monkeypatch, "dlq", "remove", "--yes") == USAGE
    assert "--stale, --unmatched and/or --malformed" in capsys.readouterr().err
    assert _counts(dlq) == (1, 0), "nothing was read"


def test_hostile_text_in_letters_is_shown_escaped_and_never_kept_whole(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _send(dlq, [json.dumps({"outbox_id": 7, "event_id": "\x1b[2J\x1b[31mx\ny\u202e"})])
    assert _cli(relay_env, monkeypatch, "dlq", "list") == DONE
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[2J" in out
    assert not any(line.startswith("y") for line in out.splitlines())
    long = parse_letter("m", "r", json.dumps({"outbox_id": 1, "event_id": "e" * 250_000}))
    assert long.event_id is None and long.problem == "event_id longer than 36 characters"
    assert printable("a\rb\x7f\u2028") == "a\\rb\\x7f\\u2028"


@pytest.mark.parametrize(
    "argv", [["dlq", "list"], ["redrive", "--from-dlq"], ["purge", "--ids", "1", "--dlq", "--yes"]]
)
def test_a_missing_queue_is_one_line_and_changes_nothing(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    _dead(database, "A", 1)
    env = {**relay_env, "DLQ_QUEUE_URL": f"{support.MOTO}/000000000000/no-such-queue"}
    assert _cli(env, monkeypatch, *argv) == FAILED
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "NonExistentQueue" in err or "QueueDoesNotExist" in err, err
    assert database.status_counts() == {"DEAD": 1}


def test_a_refused_redrive_changes_nothing_not_even_stale_letters(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (row,) = _dead(database, "A", 1)
    _send(dlq, [_letter(*row), _letter(10**9, "gone")])  # one redrivable, one stale
    database.query(
        "UPDATE outbox_shard SET lease_owner = 'relay-1', lease_token = 'rrrrrrrrrrrrrrrr',"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 60 SECOND"
    )
    assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq", "--wait", "0.5") == REFUSED
    assert "nothing was changed" in capsys.readouterr().err
    assert _counts(dlq) == (2, 0) and database.status_counts() == {"DEAD": 1}
