"""Keys that differ only by trailing spaces are different keys, in every statement that compares
or groups them (utf8mb4_bin pads: "k" = "k " as text).  tests/unit/test_sql_identity.py finds
any statement of sql.py that compares them as text; these show what the exact ones do on MariaDB.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from outbox_relay import cli
from outbox_relay.cli_common import DONE
from tests import support
from tests.conftest import make_topics

# Both spellings in one shard (CRC32 % 16 of each is the same), so that only the key tells them apart.
KEY = "k-14"
PADDED = KEY + " "
assert zlib.crc32(KEY.encode()) % 16 == zlib.crc32(PADDED.encode()) % 16


def _cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cli.main(list(argv))


def _statuses(database: support.Database, aggregate_id: str) -> list[str]:
    return [
        str(s)
        for (s,) in database.query(
            "SELECT status FROM outbox WHERE CAST(aggregate_id AS BINARY) = %s ORDER BY id",
            aggregate_id.encode(),
        )
    ]


def test_redrive_republishes_only_its_own_aggregates_later_events(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database.insert(
        [
            support.Event("acct", KEY, "e", b"{}"),
            support.Event("acct", PADDED, "e", b"{}"),
            support.Event("acct", KEY, "e", b"{}"),
            support.Event("acct", PADDED, "e", b"{}"),
        ]
    )
    database.query("UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6)")
    database.query("UPDATE outbox SET status = 'DEAD', dead_at = UTC_TIMESTAMP(6) WHERE id = 1")

    assert _cli(relay_env, monkeypatch, "redrive", "--ids", "1", "--wait", "5") == DONE
    assert "1 later event(s) of those aggregates will be published again" in capsys.readouterr().out
    assert _statuses(database, KEY) == ["PENDING", "PENDING"]
    assert _statuses(database, PADDED) == ["PUBLISHED", "PUBLISHED"], "a separate aggregate: untouched"


def test_a_blocked_aggregate_holds_back_only_itself_not_its_padded_twin(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    make_topics(topics, "acct")
    database.insert([support.Event("acct", KEY, "e", b"{}", seq=n) for n in (1, 2)])
    database.insert([support.Event("acct", PADDED, "e", b"{}", seq=n) for n in (1, 2)])
    # KEY's head backs off for an hour: KEY waits, PADDED must not.
    database.query(
        "UPDATE outbox SET attempts = 1, available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE id = 1"
    )
    summary = invoke()
    assert summary["published"] == 2, summary
    assert _statuses(database, KEY) == ["PENDING", "PENDING"]
    assert _statuses(database, PADDED) == ["PUBLISHED", "PUBLISHED"]
    keys = [r.key for r in topics.read("acct")]
    assert keys == [PADDED.encode()] * 2


def test_status_counts_padded_keys_apart(
    database: support.Database,
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database.insert(
        [
            support.Event("acct", KEY, "e", b"{}"),
            support.Event("acct", PADDED, "e", b"{}"),
            support.Event("acct ", KEY, "e", b"{}"),
        ]
    )
    database.query("UPDATE outbox SET attempts = 1, available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR")
    assert _cli(relay_env, monkeypatch, "status", "--json") == DONE
    status = json.loads(capsys.readouterr().out)
    assert status["blocked_aggregates"] == 3, status
    routes = {r["topic"]: r["pending"] for r in status["topics"]}
    assert sorted(routes.values()) == [1, 2] and len(routes) == 2, routes
