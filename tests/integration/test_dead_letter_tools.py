"""redrive, purge, dlq and unlease on real MariaDB and moto SQS: hostile letters, guards, leases,
and Ctrl-C at every statement boundary."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay import admin_dead, cli, dlq_admin
from outbox_relay.cli_common import DONE, FAILED, NOTHING_TO_DO, REFUSED, USAGE
from outbox_relay.dlq_admin import DeadLetterQueueAdmin
from tests import support
from tests.sqs_rules import sqs_accepts

SQS = boto3.client("sqs", endpoint_url=support.MOTO, region_name="us-east-1")


def _cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cli.main(list(argv))


def _dead(
    database: support.Database, aggregate: str, n: int, published_after: int = 0
) -> list[tuple[int, str]]:
    """``n`` DEAD rows of one aggregate, then ``published_after`` PUBLISHED ones: (id, event_id)."""
    database.insert([support.Event("acct", aggregate, "e", b"{}", seq=i) for i in range(n + published_after)])
    rows = database.query("SELECT id, event_id FROM outbox WHERE aggregate_id = %s ORDER BY id", aggregate)
    for k, (row_id, _) in enumerate(rows):
        status = "DEAD" if k < n else "PUBLISHED"
        database.query(
            "UPDATE outbox SET status = %s, dead_at = IF(%s = 'DEAD', UTC_TIMESTAMP(6), NULL),"
            " published_at = IF(%s = 'PUBLISHED', UTC_TIMESTAMP(6), NULL) WHERE id = %s",
            status,
            status,
            status,
            row_id,
        )
    return [(int(i), str(e)) for i, e in rows[:n]]


def _letter(row_id: int, event_id: str) -> str:
    return json.dumps({"outbox_id": row_id, "event_id": event_id, "reason": "test"})


def _send(queue: support.Queue, bodies: list[str]) -> None:
    for body in bodies:
        SQS.send_message(QueueUrl=queue.url, MessageBody=body)


def _counts(queue: support.Queue) -> tuple[int, int]:
    """(visible, in flight) messages."""
    got = SQS.get_queue_attributes(
        QueueUrl=queue.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(got["ApproximateNumberOfMessages"]), int(got["ApproximateNumberOfMessagesNotVisible"])


def _operator_leases(database: support.Database) -> int:
    return int(
        database.query(
            "SELECT COUNT(*) FROM outbox_shard WHERE lease_owner LIKE 'operator %%'"
            " AND lease_until > UTC_TIMESTAMP(6)"
        )[0][0]
    )


def _status(database: support.Database, row_id: int) -> str | None:
    found = database.query("SELECT status FROM outbox WHERE id = %s", row_id)
    return str(found[0][0]) if found else None


# --- letters are untrusted input -------------------------------------------------------------

HOSTILE = [
    "not json",
    "",
    "[]",
    '"a string"',
    "null",
    '{"event_id": {"a": 1}}',
    '{"event_id": [1, 2]}',
    '{"outbox_id": true, "event_id": "x"}',
    '{"outbox_id": "1", "event_id": "x"}',
    '{"outbox_id": 1.0, "event_id": "x"}',
    '{"outbox_id": -1, "event_id": "x"}',
    '{"outbox_id": 18446744073709551616, "event_id": "x"}',
    '{"outbox_id": 1, "event_id": null}',
    '{"outbox_id": 1, "event_id": 5}',
    "[" * 5000 + "]" * 5000,
]


def test_redrive_from_the_dlq_trusts_a_letter_only_when_it_names_a_dead_row_by_both_ids(
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (good,) = _dead(database, "good", 1)
    (padded,) = _dead(database, "padded", 1)
    (crossed,) = _dead(database, "crossed", 1)
    (other,) = _dead(database, "other", 1)
    database.insert([support.Event("acct", "done", "e", b"{}")])
    (published_id, published_event) = database.query(
        "SELECT id, event_id FROM outbox WHERE aggregate_id = 'done'"
    )[0]
    database.query("UPDATE outbox SET status = 'PUBLISHED' WHERE id = %s", published_id)
    foreign = [
        _letter(padded[0], padded[1] + "   "),  # CHAR pads: the same id as text, not as bytes
        _letter(crossed[0], other[1]),  # the outbox_id of one DEAD row, the event_id of another
        json.dumps({"outbox_id": crossed[0]}),  # no event_id: cannot be checked
    ]
    stale = [_letter(int(published_id), str(published_event)), _letter(10**9, "gone")]
    _send(dlq, [_letter(*good), *foreign, *stale, *HOSTILE])

    assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq", "--wait", "5") == DONE
    out = capsys.readouterr().out
    assert (
        f"read {3 + len(foreign) + len(HOSTILE)} dead letter(s) from the queue: 1 redrivable, 2 stale, "
        f"3 unmatched, {len(HOSTILE)} malformed" in out
    ), out
    assert "deleted 3 letter(s) from the dead-letter queue (their rows redriven, or stale)" in out
    assert [_status(database, i) for i, _ in (good, padded, crossed, other)] == [
        "PENDING",
        "DEAD",
        "DEAD",
        "DEAD",
    ]
    # What it did not delete is visible again at once: a second run sees it all.
    assert _counts(dlq) == (len(foreign) + len(HOSTILE), 0)
    assert _cli(relay_env, monkeypatch, "redrive", "--from-dlq") == NOTHING_TO_DO
    assert f"{len(foreign) + len(HOSTILE)} message(s) name no row of this outbox" in capsys.readouterr().out

    assert _cli(relay_env, monkeypatch, "dlq", "list", "--json") == DONE
    listed = json.loads(capsys.readouterr().out)
    assert listed["counts"] == {
        "redrivable": 0,
        "stale": 0,
        "pending": 0,
        "unmatched": 3,
        "malformed": len(HOSTILE),
    }
    assert _cli(relay_env, monkeypatch, "dlq", "remove", "--malformed", "--unmatched") == REFUSED
    assert _counts(dlq) == (len(foreign) + len(HOSTILE), 0)
    assert _cli(relay_env, monkeypatch, "dlq", "remove", "--malformed", "--unmatched", "--yes") == DONE
    assert _counts(dlq) == (0, 0)
    assert database.status_counts() == {"PENDING": 1, "DEAD": 3, "PUBLISHED": 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bodies=st.lists(
        st.one_of(
            st.text(max_size=200),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                lambda inner: (
                    st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
                ),
                max_leaves=12,
            ).map(json.dumps),
            st.fixed_dictionaries(
                {
                    "outbox_id": st.integers(min_value=-(2**70), max_value=2**70),
                    "event_id": st.text(max_size=40),
                }
            ).map(json.dumps),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_no_letter_body_crashes_the_letter_commands_or_redrives_a_row_it_does_not_name(
    bodies: list[str],
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not database.query("SELECT 1 FROM outbox LIMIT 1"):
        _dead(database, "kept", 2)
    # What SQS refuses (characters outside XML, empty bodies) never reaches the queue.
    legal = [b for b in bodies if b and sqs_accepts(b, 262_144)]
    _send(dlq, legal)
    for argv in (("redrive", "--from-dlq", "--wait", "1"), ("dlq", "list")):
        code = _cli(relay_env, monkeypatch, *argv)
        assert code in (DONE, NOTHING_TO_DO), capsys.readouterr()
    assert "Traceback" not in capsys.readouterr().err
    assert database.status_counts() == {"DEAD": 2}, "no body names a DEAD row by both ids"
    visible, hidden = _counts(dlq)
    assert hidden == 0 and visible <= len(legal)  # stale letters (naming no row) may be deleted
    _ = dlq.bodies()  # empty it for the next example


# --- purge acts on what the preview showed ---------------------------------------------------


def _guard(out: str) -> list[str]:
    """The purge command the preview printed, as arguments."""
    (line,) = [x for x in out.splitlines() if "To delete exactly these: outbox-relay purge " in x]
    return line.split("outbox-relay purge ", 1)[1].split()


def test_purge_all_deletes_only_the_previewed_rows_and_refuses_when_they_changed(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database.insert([support.Event("acct", "early", "e", b"{}")])  # pending for now
    (early,) = [i for (i,) in database.query("SELECT id FROM outbox")]
    rows = _dead(database, "A", 3)
    top = rows[-1][0]

    assert _cli(relay_env, monkeypatch, "purge", "--all") == REFUSED
    guard = _guard(capsys.readouterr().out)
    assert guard[:4] == ["--all", "--max-id", str(top), "--expect"] and guard[-1] == "--yes", guard
    assert guard[4].startswith("3:"), guard
    assert _cli(relay_env, monkeypatch, "purge", "--all", "--yes") == USAGE
    assert "needs the guard the preview (purge --all) prints" in capsys.readouterr().err

    # Between preview and purge one shown row is redriven and an older one goes DEAD: the same
    # count, another set.  Nothing is deleted.
    database.query("UPDATE outbox SET status = 'PENDING', dead_at = NULL WHERE id = %s", rows[0][0])
    database.query("UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) WHERE id = %s", early)
    assert _cli(relay_env, monkeypatch, "purge", *guard) == REFUSED
    assert f"the DEAD rows up to id {top} changed since the preview" in capsys.readouterr().err
    assert database.status_counts() == {"DEAD": 3, "PENDING": 1}

    later = _dead(database, "B", 1)  # past the guard's max id: kept
    assert _cli(relay_env, monkeypatch, "purge", "--all", "--max-id", str(top)) == REFUSED
    guard = _guard(capsys.readouterr().out)
    assert _cli(relay_env, monkeypatch, "purge", *guard) == DONE
    assert "deleted 3 DEAD row(s)" in capsys.readouterr().out
    assert sorted(r["id"] for r in database.rows()) == [rows[0][0], later[0][0]]


# --- leases ------------------------------------------------------------------------------------


def _lease(database: support.Database, shard: int, owner: str) -> None:
    database.query(
        "UPDATE outbox_shard SET lease_owner = %s, lease_token = %s,"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 600 SECOND WHERE shard = %s",
        owner,
        f"{shard:016d}",
        shard,
    )


def test_unlease_ends_a_dead_operator_commands_lease_and_never_a_relays_or_a_running_ones(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = admin_dead.operator_owner("redrive").split()[2]
    _lease(database, 3, f"operator redrive {here} pid {os.getpid() + 1_000_000}")  # no such process
    _lease(database, 4, admin_dead.operator_owner("redrive"))  # this test's own pid: running
    _lease(database, 5, "relay-request-1")
    _lease(database, 6, "operator purge other-host pid 12")

    assert _cli(relay_env, monkeypatch, "unlease", "--shards", "5") == REFUSED
    assert "shard 5: leased by relay-request-1" in capsys.readouterr().out
    assert _cli(relay_env, monkeypatch, "unlease") == DONE
    out = capsys.readouterr().out
    assert "released 1 operator lease(s): shard 3" in out, out
    assert "shard 4: " in out and "its command is still running here" in out
    assert "shard 6: " in out and "add --force if it is gone" in out
    held = database.query(
        "SELECT shard FROM outbox_shard WHERE lease_until > UTC_TIMESTAMP(6) ORDER BY shard"
    )
    assert held == [(4,), (5,), (6,)]
    assert _cli(relay_env, monkeypatch, "unlease", "--shards", "6", "--force") == DONE
    assert _cli(relay_env, monkeypatch, "unlease", "--shards", "3") == NOTHING_TO_DO


def test_ctrl_c_while_waiting_for_a_relays_lease_gives_back_the_shards_taken(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = _dead(database, "A", 1) + _dead(database, "B", 1)
    shards = [int(s) for (s,) in database.query("SELECT shard FROM outbox WHERE status = 'DEAD' ORDER BY id")]
    assert shards[0] != shards[1]
    database.query(
        "UPDATE outbox_shard SET lease_owner = 'relay-1', lease_token = 'xxxxxxxxxxxxxxxx',"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 600 SECOND WHERE shard = %s",
        shards[1],
    )
    timer = threading.Timer(1.0, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    try:
        ids = ",".join(str(i) for i, _ in rows)
        assert _cli(relay_env, monkeypatch, "redrive", "--ids", ids, "--wait", "600") == FAILED
    finally:
        timer.cancel()
    assert "interrupted" in capsys.readouterr().err
    assert _operator_leases(database) == 0, "the shard it held while waiting is given back"
    assert database.status_counts() == {"DEAD": 2}


# --- Ctrl-C at every statement boundary --------------------------------------------------------


class Boundaries:
    """Counts the statements and SQS calls of a command, and sends SIGINT after the k-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.stop_after: int | None = None
        execute = pymysql.cursors.Cursor.execute
        call = DeadLetterQueueAdmin._call

        def counted_execute(cursor: Any, query: Any, args: Any = None) -> Any:
            result = execute(cursor, query, args)
            self._tick()
            return result

        def counted_call(queue: Any, what: str, fn: Callable[[], Any]) -> Any:
            result = call(queue, what, fn)
            self._tick()
            return result

        monkeypatch.setattr(pymysql.cursors.Cursor, "execute", counted_execute)
        monkeypatch.setattr(DeadLetterQueueAdmin, "_call", counted_call)

    def _tick(self) -> None:
        self.count += 1
        if self.count == self.stop_after:
            signal.raise_signal(signal.SIGINT)

    def run(self, stop_after: int | None, fn: Callable[[], int]) -> int:
        self.count, self.stop_after = 0, stop_after
        try:
            return fn()
        finally:
            self.stop_after = None


def _letters(queue: support.Queue) -> list[dict[str, Any]]:
    """Every letter in the queue (read and put back)."""
    bodies = queue.bodies()
    _send(queue, bodies)
    return [json.loads(b) if b.startswith("{") else {"raw": b} for b in bodies]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_dead, "BATCH_ROWS", 2)


def _scenario(
    command: str, database: support.Database, dlq: support.Queue
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """DEAD rows of three aggregates (two each, a published event after them) and one more (the
    purge leaves it alone, the redrive takes it too), a letter for each, and a malformed message."""
    database.query("DELETE FROM outbox")
    database.query(
        "UPDATE outbox_shard SET lease_token = NULL, lease_owner = NULL, lease_until = '1970-01-01'"
    )
    _ = dlq.bodies()
    target = _dead(database, "A", 2, 1) + _dead(database, "B", 2, 1) + _dead(database, "C", 2, 1)
    kept = _dead(database, "K", 1)
    _send(dlq, [_letter(*r) for r in target + kept] + ["not a letter"])
    return (target, kept) if command == "purge" else (target + kept, [])


@pytest.mark.parametrize("command", ["purge", "redrive"])
def test_ctrl_c_at_every_statement_boundary_leaves_rows_and_letters_consistent_and_a_rerun_finishes(
    command: str,
    database: support.Database,
    dlq: support.Queue,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    small_batches: None,
) -> None:
    boundaries = Boundaries(monkeypatch)

    def argv(target: list[tuple[int, str]]) -> list[str]:
        if command == "purge":
            return ["purge", "--dlq", "--yes", "--ids", ",".join(str(i) for i, _ in target)]
        return ["redrive", "--from-dlq", "--wait", "5"]

    target, kept = _scenario(command, database, dlq)
    assert boundaries.run(None, lambda: _cli(relay_env, monkeypatch, *argv(target))) == DONE
    total = boundaries.count
    assert total >= 15, total
    interrupted = 0
    for k in range(1, total + 1):
        target, kept = _scenario(command, database, dlq)
        args = argv(target)
        code = boundaries.run(k, lambda: _cli(relay_env, monkeypatch, *args))  # noqa: B023
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, (k, captured.err)
        assert code in (DONE, FAILED), (k, code, captured)
        interrupted += code == FAILED
        _check_consistent(command, database, dlq, target, kept, k)
        # The same command again finishes the work.
        assert _cli(relay_env, monkeypatch, *argv(target)) in (DONE, NOTHING_TO_DO), (k, capsys.readouterr())
        capsys.readouterr()
        _check_finished(command, database, dlq, target, kept, k)
    # An interrupt after the last checkpoint lets the command finish (DONE): that is fine too.
    assert interrupted > total // 2, (interrupted, total)


def _check_consistent(
    command: str,
    database: support.Database,
    dlq: support.Queue,
    target: list[tuple[int, str]],
    kept: list[tuple[int, str]],
    k: int,
) -> None:
    assert _counts(dlq)[1] == 0, f"boundary {k}: letters left invisible"
    assert _operator_leases(database) == 0, f"boundary {k}: an operator lease left behind"
    named = {(x.get("outbox_id"), x.get("event_id")) for x in _letters(dlq)}
    assert any("raw" in x for x in _letters(dlq)), f"boundary {k}: the malformed message was removed"
    for row_id, event_id in kept:
        assert _status(database, row_id) == "DEAD" and (row_id, event_id) in named, f"boundary {k}"
    for row_id, event_id in target:
        status = _status(database, row_id)
        if status is None:  # purged: never a letter of a purged row
            assert (row_id, event_id) not in named, f"boundary {k}: letter of purged row {row_id} left"
        if status == "DEAD" and command == "redrive":  # a letter goes only after its row's redrive
            assert (row_id, event_id) in named, f"boundary {k}: DEAD row {row_id} lost its letter"
    if command == "redrive":  # each aggregate whole: all its rows redriven with the later event, or none
        for aggregate in ("A", "B", "C"):
            states = [
                s
                for (s,) in database.query(
                    "SELECT status FROM outbox WHERE aggregate_id = %s ORDER BY id", aggregate
                )
            ]
            assert states in (["DEAD", "DEAD", "PUBLISHED"], ["PENDING", "PENDING", "PENDING"]), (
                k,
                aggregate,
                states,
            )


def _check_finished(
    command: str,
    database: support.Database,
    dlq: support.Queue,
    target: list[tuple[int, str]],
    kept: list[tuple[int, str]],
    k: int,
) -> None:
    _check_consistent(command, database, dlq, target, kept, k)
    letters = _letters(dlq)
    assert len(letters) == 1 + len(kept), (k, letters)
    want = None if command == "purge" else "PENDING"
    assert [_status(database, i) for i, _ in target] == [want] * len(target), k


@pytest.fixture(autouse=True)
def _short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto answers a zero-wait receive with every visible message (one list, no sampling)."""
    monkeypatch.setattr(dlq_admin, "RECEIVE_WAIT_SECONDS", 0)


@pytest.fixture(autouse=True)
def _no_stray_interrupt() -> Iterator[None]:
    """A SIGINT meant for a command must never reach pytest itself."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)
