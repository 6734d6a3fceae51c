"""Operating the relay: redrive in order, retention in batches beside writers, status."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from outbox_relay import cli
from tests import support
from tests.conftest import make_topics


def _run_cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cli.main(list(argv))


def test_redrive_from_the_dlq_puts_the_event_back_before_its_aggregates_later_events(
    database: support.Database,
    topics: support.Topics,
    dlq: support.Queue,
    invoke: Any,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_topics(topics, "acct")
    big = b'{"memo": "' + b"m" * 3000 + b'"}'
    events = [
        support.Event("acct", "A", "e", big if n == 2 else b'{"n": %d}' % n, seq=n) for n in range(1, 6)
    ]
    events += [support.Event("acct", "B", "e", b"{}", seq=n) for n in range(1, 4)]
    database.insert(events)

    # A limit too low for A2: it is dead-lettered, and A's later events go on without it.
    first = invoke(OUTBOX_MAX_MESSAGE_BYTES="2048")
    assert (first["published"], first["dead_lettered"]) == (7, 1), first
    # The limit is raised; the operator redrives what the DLQ holds.
    assert _run_cli(relay_env, monkeypatch, "redrive", "--from-dlq") == 0
    out = capsys.readouterr().out
    assert "redrove 1 event(s) of 1 aggregate(s); 3 later event(s)" in out
    assert "deleted 1 letter(s) from the dead-letter queue (their rows redriven, or stale)" in out
    assert dlq.messages() == []
    second = invoke()
    assert second["published"] == 4 and second["pending"] == 0, second

    records = topics.read("acct")
    log_order = [int(r.headers["seq"]) for r in records if r.key == b"A"]
    assert log_order == [1, 3, 4, 5, 2, 3, 4, 5], "A2 back in its place, A3-A5 published again after it"
    delivered = support.Delivered(records)
    assert delivered.last_copy_sequences()[(topics.name("acct"), b"A")] == [1, 2, 3, 4, 5]
    assert delivered.order_violations() == 0
    assert [int(r.headers["seq"]) for r in records if r.key == b"B"] == [1, 2, 3], "B untouched"


@pytest.mark.parametrize(
    ("died_hours_ago", "retention", "at_risk"), [(48, "86400", True), (1, "86400", False), (0, "0", True)]
)
def test_redrive_warns_when_the_aggregates_later_events_may_be_deleted_already(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    died_hours_ago: int,
    retention: str,
    at_risk: bool,
) -> None:
    """Later events of an aggregate go out after its dead one went DEAD; once that is longer ago
    than the published retention, the janitor may have deleted them, and they cannot be sent
    again after the redriven event: the redrive says so (it still redrives)."""
    database.insert([support.Event("acct", "A", "e", b"{}", seq=n) for n in (1, 2)])
    database.query(
        "UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) - INTERVAL %s HOUR WHERE seq = 1",
        died_hours_ago,
    )
    env = {**relay_env, "OUTBOX_RETENTION_SECONDS": retention}
    ((dead_id,),) = database.query("SELECT id FROM outbox WHERE status = 'DEAD'")

    assert _run_cli(env, monkeypatch, "redrive", "--ids", str(dead_id)) == 0

    out = capsys.readouterr().out
    assert "redrove 1 event(s) of 1 aggregate(s)" in out
    assert ("may have later events already deleted by retention (acct/A)" in out) is at_risk, out
    assert database.query("SELECT status FROM outbox WHERE id = %s", dead_id) == [("PENDING",)]


def test_redrive_waits_for_a_running_relay_and_changes_nothing_when_it_cannot(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database.insert([support.Event("acct", "A", "e", b"{}")])
    database.query("UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6)")
    database.query(
        "UPDATE outbox_shard SET lease_owner = 'busy-relay', lease_token = 'xxxxxxxxxxxxxxxx',"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 60 SECOND"
    )

    assert _run_cli(relay_env, monkeypatch, "redrive", "--ids", "1", "--wait", "0.5") == 3

    err = capsys.readouterr().err
    assert "still leased after waiting 0.5s (shard " in err and " by busy-relay for " in err, err
    assert "nothing was changed" in err
    assert database.status_counts() == {"DEAD": 1}
    # The shards it did take are given back: only the relay's leases remain.
    assert database.query("SELECT COUNT(*) FROM outbox_shard WHERE lease_owner LIKE 'operator %%'") == [(0,)]


def test_retention_purges_old_rows_in_batches_while_writers_insert_and_never_touches_pending(
    database: support.Database, invoke: Any
) -> None:
    database.insert(support.backlog(30_000, 500))
    with database.conn() as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6) - INTERVAL 2 DAY"
            " WHERE id <= 25000"
        )
        cur.execute(
            "UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6)"
            " WHERE id BETWEEN 25001 AND 27000"
        )
        cur.execute(
            "UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) - INTERVAL 40 DAY"
            " WHERE id BETWEEN 27001 AND 27500"
        )
        cur.execute(
            "UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) WHERE id BETWEEN 27501 AND 28000"
        )
    pending_before = database.query(
        "SELECT id, attempts, available_at, payload FROM outbox WHERE status = 'PENDING'"
    )
    old = database.query(
        "SELECT shard, SUM(status = 'PUBLISHED' AND published_at < UTC_TIMESTAMP(6) - INTERVAL 1 DAY),"
        " SUM(status = 'DEAD' AND dead_at < UTC_TIMESTAMP(6) - INTERVAL 30 DAY) FROM outbox GROUP BY shard"
    )
    # At most 1000 rows per DELETE, per shard and kind; the last one of each finds fewer.
    expected_batches = sum(int(p) // 1000 + 1 + int(d) // 1000 + 1 for _, p, d in old)
    assert len(pending_before) == 2000

    stop = threading.Event()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        conn = database.conn()
        try:
            with conn.cursor() as cur:
                i = 0
                while not stop.is_set():
                    started = time.monotonic()
                    cur.execute(
                        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)"
                        " VALUES ('order', %s, 'New', '{}')",
                        (f"w{n}-{i % 50}",),
                    )
                    latencies.append(time.monotonic() - started)
                    i += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for w in writers:
        w.start()
    try:
        report = invoke({"action": "janitor"}, OUTBOX_JANITOR_BATCH_SIZE="1000")
    finally:
        stop.set()
        for w in writers:
            w.join()

    assert report["ok"], report
    assert (report["deleted_published"], report["deleted_dead"]) == (25_000, 500)
    assert report["batches"] == expected_batches
    assert errors == []
    assert len(latencies) > 100 and max(latencies) < 0.5, f"a writer waited {max(latencies):.3f}s"
    counts = database.status_counts()
    assert counts["PUBLISHED"] == 2000 and counts["DEAD"] == 500
    pending_after = database.query(
        "SELECT id, attempts, available_at, payload FROM outbox WHERE status = 'PENDING' AND id <= 30000"
    )
    assert pending_after == pending_before, "no pending row touched"
    assert counts["PENDING"] == 2000 + len(latencies)


def test_status_shows_the_backlog_per_topic_and_the_leases_held(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database.insert(
        support.backlog(30, 3, aggregate_type="order") + support.backlog(12, 2, aggregate_type="customer")
    )
    database.query("UPDATE outbox SET created_at = UTC_TIMESTAMP(6) - INTERVAL 90 SECOND WHERE id = 1")
    database.query("UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) WHERE id IN (2, 31)")
    database.query(
        "UPDATE outbox SET attempts = 2, last_error = 'broker said no',"
        " available_at = UTC_TIMESTAMP(6) + INTERVAL 60 SECOND WHERE id = 3"
    )
    ((held_back,),) = database.query("SELECT aggregate_id FROM outbox WHERE id = 3")
    database.query(
        "UPDATE outbox_shard SET lease_owner = 'relay-7f3a', lease_token = 'tttttttttttttttt', fence = 4,"
        " lease_until = UTC_TIMESTAMP(6) + INTERVAL 50 SECOND WHERE shard = 3"
    )

    assert (
        _run_cli(
            {**relay_env, "OUTBOX_TOPIC_TEMPLATE": "outbox.event.{aggregate_type}"}, monkeypatch, "status"
        )
        == 0
    )

    out = capsys.readouterr().out
    print(out)
    lines = out.splitlines()
    assert lines[1].split() == ["PENDING", "OLDEST", "PENDING", "(s)", "DEAD", "PUBLISHED", "(retained)"]
    pending, oldest, dead, published = lines[3].split()
    assert (pending, dead, published) == ("40", "2", "0") and 90 <= float(oldest) < 100
    assert "outbox.event.customer       11     1" in out
    assert "outbox.event.order          29     1" in out
    assert "leases held: 1" in out
    (lease,) = [line.split() for line in lines if "relay-7f3a" in line]
    assert lease[:3] == ["3", "relay-7f3a", "4"] and 45 < float(lease[3]) <= 50
    # The aggregates a row in backoff holds back, and why.
    assert "aggregates held back by a row in backoff: 1" in out
    (blocked,) = [line.split() for line in lines if line.startswith(f"order/{held_back} ")]
    assert blocked[1] == "2" and 55 < float(blocked[2]) <= 60 and blocked[3:] == ["broker", "said", "no"]


def test_purge_shows_first_then_deletes_dead_rows_and_their_dead_letters(
    database: support.Database,
    topics: support.Topics,
    dlq: support.Queue,
    invoke: Any,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_topics(topics, "acct")
    database.insert([support.Event("acct", "A", "e", b"not json"), support.Event("acct", "B", "e", b"{}")])
    assert invoke()["dead_lettered"] == 1
    (dead_id,) = [r["id"] for r in database.rows() if r["status"] == "DEAD"]

    assert _run_cli(relay_env, monkeypatch, "purge", "--ids", str(dead_id)) == 3
    assert (
        f"1 DEAD row(s) would be deleted; nothing was deleted. To delete exactly these: "
        f"outbox-relay purge --ids {dead_id} --yes" in capsys.readouterr().out
    )
    assert database.status_counts() == {"DEAD": 1, "PUBLISHED": 1}

    assert _run_cli(relay_env, monkeypatch, "purge", "--ids", "999") == 4  # nothing to do
    assert "1 id(s) not found (already purged?): 999" in capsys.readouterr().out
    (published_id,) = [r["id"] for r in database.rows() if r["status"] == "PUBLISHED"]
    assert _run_cli(relay_env, monkeypatch, "purge", "--ids", f"{dead_id},{published_id}", "--yes") == 3
    assert f"not DEAD: ids {published_id}; nothing was deleted" in capsys.readouterr().err

    assert _run_cli(relay_env, monkeypatch, "purge", "--ids", str(dead_id), "--dlq", "--yes") == 0
    out = capsys.readouterr().out
    assert (
        "deleted 1 DEAD row(s)" in out
        and "deleted 1 letter(s) from the dead-letter queue (of the rows to purge)" in out
    )
    assert database.status_counts() == {"PUBLISHED": 1}
    assert dlq.messages() == []


def test_dry_run_lists_what_the_next_run_would_do_and_changes_nothing(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database.insert(
        [
            support.Event("acct", "A", "e", b"{}"),
            support.Event("acct", "A", "e", b"{}"),
            support.Event("acct", "B", "e", b"oops"),
        ]
    )
    database.query(
        "UPDATE outbox SET attempts = 2, available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE id = 1"
    )
    before = database.rows()

    assert (
        _run_cli(
            {**relay_env, "OUTBOX_TOPIC_TEMPLATE": "outbox.event.{aggregate_type}"}, monkeypatch, "dry-run"
        )
        == 0
    )

    out = capsys.readouterr().out
    lines = {int(line.split()[0]): line for line in out.splitlines() if "acct/" in line}
    assert "backing off (attempt 2)" in lines[1]
    assert "waits behind an earlier event of its aggregate" in lines[2]
    assert "dead-letter: payload is not valid JSON" in lines[3]
    assert "3 row(s) at the heads of the shards: 0 would be published" in out
    assert database.rows() == before
