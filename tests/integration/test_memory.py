"""Memory is bounded by bytes, whatever the rows hold: one invocation, in a fresh interpreter as a
cold Lambda runs it, stays under 200 MB of peak RSS with the largest rows the schema allows at
every shard head and a backlog of 64 KB payloads behind them.

Before the byte budget, rows were read whole (payload included) 2000 to a page: the same rows
took an invocation past 460 MB (a 256 MB function is killed, and the next run reads them again)."""

from __future__ import annotations

import json
import zlib

from tests import support
from tests.conftest import make_topics

LIMIT_MB = 200
MEDIUMBLOB = 16 * 1024 * 1024 - 1  # the largest payload the column holds
TEXT = 65_535  # the largest headers value


def one_per_shard(prefix: str) -> list[str]:
    found: dict[int, str] = {}
    n = 0
    while len(found) < 16:
        candidate = f"{prefix}-{n}"
        found.setdefault(zlib.crc32(candidate.encode()) % 16, candidate)
        n += 1
    return [found[s] for s in range(16)]


def json_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    return b'{"pad":"' + b"x" * (size - 10) + b'"}'


def largest_headers() -> str:
    text = json.dumps({"trace": "t" * (TEXT - 14)})
    assert len(text.encode()) == TEXT - 1
    return text


def test_the_largest_rows_at_every_shard_head_and_a_64_kb_backlog_stay_under_200_mb(
    database: support.Database, topics: support.Topics, dlq: support.Queue, relay_env: dict[str, str]
) -> None:
    """Defaults (OUTBOX_MAX_MESSAGE_BYTES 1 MiB, OUTBOX_MAX_BATCH_BYTES 8 MiB): at every shard
    head the largest row the schema allows (a 16 MiB payload, 64 KB of headers: over the limit,
    dead-lettered without being loaded), behind each the largest rows the limit allows (1 MiB),
    and 2000 rows of 64 KB behind those."""
    make_topics(topics, "order", **{"max.message.bytes": str(2 * 1024 * 1024)})
    heads = one_per_shard("big")
    database.insert(
        [
            support.Event("order", a, "Huge", json_of(MEDIUMBLOB), seq=1, headers=largest_headers())
            for a in heads
        ],
        chunk=1,
    )
    database.insert(
        [support.Event("order", a, "Large", json_of(1024 * 1024), seq=n) for n in (2, 3, 4) for a in heads],
        chunk=4,
    )
    backlog = [
        support.Event("order", f"small-{n % 50}", "Changed", json_of(64 * 1024), seq=n // 50 + 1)
        for n in range(2000)
    ]
    database.insert(backlog, chunk=50)

    summary, peak = support.handler_in_child(relay_env, timeout=240)

    assert summary["ok"] and summary["pending"] == 0, summary
    assert summary["dead_lettered"] == 16 and summary["published"] == 48 + 2000, summary
    print(f"\npeak RSS {peak:.0f} MB: 16 x 16 MiB heads, 48 x 1 MiB rows, 2000 x 64 KB rows")
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB"
    delivered = support.Delivered(topics.read("order"))
    assert len(delivered.copies()) == 2048 and delivered.order_violations() == 0
    assert len(dlq.messages()) == 16


def test_oversize_rows_at_every_shard_head_are_dead_lettered_without_being_loaded(
    database: support.Database, topics: support.Topics, dlq: support.Queue, relay_env: dict[str, str]
) -> None:
    make_topics(topics, "order")
    heads = one_per_shard("over")
    database.insert(
        [
            support.Event("order", a, "Huge", json_of(MEDIUMBLOB), seq=1, headers=largest_headers())
            for a in heads
        ],
        chunk=1,
    )
    database.insert([support.Event("order", a, "Small", b"{}", seq=2) for a in heads])

    summary, peak = support.handler_in_child(relay_env, timeout=120)

    assert summary["ok"] and summary["dead_lettered"] == 16 and summary["published"] == 16, summary
    print(f"\npeak RSS {peak:.0f} MB for 16 oversize 16 MiB heads")
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB"
    letters = dlq.messages()
    assert len(letters) == 16
    for letter in letters:
        assert letter["payload_bytes"] == MEDIUMBLOB and "payload" not in letter, letter.keys()
        assert "over the 1048576-byte limit" in letter["reason"]
