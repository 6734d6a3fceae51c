"""Property, on the real stack: whatever the rows hold, in every column the contract allows, each
invocation returns, every good row is published in its aggregate's order, and every other row
ends DEAD with a reason (its dead letter in the queue), within a bounded number of runs.

The verdict on a row comes from the writer's contract (README, "The outbox table"), written out
here on its own, not from the relay's code: a legal topic name that exists, a payload of at most
``OUTBOX_MAX_MESSAGE_BYTES`` that parses as JSON, and ``headers`` absent or a JSON object of
string values with names that are not reserved (NULL or empty: none).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay.bodies import with_bodies
from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.deadletter_sqs import DEFAULT_MAX_MESSAGE_BYTES
from outbox_relay.kafka_tools import read_topics
from outbox_relay.model import FinalizePlan, RetryDecision
from outbox_relay.rowtext import decode, raw
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore
from tests import support
from tests.conftest import make_topics
from tests.sqs_rules import sqs_accepts

MAX_BYTES = 4096
RUNS = 4
RESERVED = {"id", "event_type", "aggregate_type", "seq"}
LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
KAFKA_INTERNAL = {"__consumer_offsets", "__transaction_state", "__cluster_metadata", "__share_group_state"}

# What a utf8mb4 column can hold: every code point but the surrogates.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
DEEP = 20_000  # far past the interpreter's recursion limit


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json"] * 4 + ["bytes", "deep", "large", "escapes", "utf8"]))
    if kind == "json":
        return json.dumps({"n": draw(st.integers()), "s": draw(TEXT)}).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "deep":
        return b"[" * DEEP + b"]" * DEEP
    if kind == "large":
        return json.dumps({"pad": "x" * draw(st.integers(MAX_BYTES - 20, MAX_BYTES + 20))}).encode()
    if kind == "escapes":  # valid JSON whose strings decode to lone surrogates: the bytes are fine
        return b'{"a": "\\ud800", "b": "\\udfff\\ufffe"}'
    return draw(TEXT).encode()


@st.composite
def headers(draw: st.DrawFn) -> str | None:
    kind = draw(
        st.sampled_from(["none"] * 3 + ["ok", "text", "surrogate", "deep", "reserved", "number", "list"])
    )
    if kind == "none":
        return None
    if kind == "ok":
        return json.dumps(draw(st.dictionaries(TEXT.filter(lambda k: k not in RESERVED), TEXT, max_size=3)))
    if kind == "text":
        return draw(TEXT)
    if kind == "surrogate":
        return '{"trace": "\\ud83d"}' if draw(st.booleans()) else '{"\\udc00": "x"}'
    if kind == "deep":
        return '{"a":' * 5000 + "1" + "}" * 5000  # 30 KB: fits TEXT, 5x the recursion limit
    if kind == "reserved":
        return json.dumps({draw(st.sampled_from(sorted(RESERVED))): "x"})
    if kind == "number":
        return '{"n": 1}'
    return '["a", "b"]'


@dataclass
class Row:
    aggregate_type: str
    aggregate: int
    event_type: str
    payload: bytes
    topic: str | None
    headers: str | None
    seq: int | None


def rows(existing: str) -> st.SearchStrategy[Row]:
    return st.builds(
        Row,
        # A type outside "order" routes to an illegal topic name (a space), never to a legal,
        # missing one: those are held back (a per-topic outage), not dead-lettered.
        aggregate_type=st.one_of(st.just("order"), st.just("order"), TEXT.map(lambda t: "bad type " + t)),
        aggregate=st.integers(0, 3),
        event_type=st.one_of(st.just("Changed"), TEXT.filter(bool)),
        payload=payloads(),
        topic=st.one_of(
            st.none(),
            st.none(),
            st.just(existing),
            st.just("__consumer_offsets"),
            st.text(st.characters(max_codepoint=127), max_size=40).map(lambda t: t + " "),
        ),
        headers=headers(),
        seq=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    )


def good(row: Row, template_topic: str) -> bool:
    """The writer's contract, independently of the relay's code."""
    topic = row.topic if row.topic else template_topic.replace("{aggregate_type}", row.aggregate_type)
    if not LEGAL_TOPIC.fullmatch(topic) or topic in (".", "..") or topic in KAFKA_INTERNAL:
        return False
    if len(row.payload) > MAX_BYTES:
        return False
    try:
        json.loads(row.payload)
    except (ValueError, RecursionError):
        return False
    if not row.headers:  # NULL or empty: no extra headers
        return True
    try:
        parsed = json.loads(row.headers)
    except (ValueError, RecursionError):
        return False
    if not isinstance(parsed, dict):
        return False
    for name, value in parsed.items():
        if name in RESERVED or not isinstance(value, str):
            return False
        try:
            name.encode()
            value.encode()
        except UnicodeEncodeError:
            return False
    return True


def test_whatever_the_rows_hold_good_rows_flow_in_order_and_the_rest_end_dead_with_a_reason(
    database: support.Database, topics: support.Topics, dlq: support.Queue, invoke: Any
) -> None:
    make_topics(topics, "order")
    existing = topics.name("order")
    template = topics.template
    dead_ids: list[int] = []

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(batch=st.lists(rows(existing), min_size=1, max_size=20))
    def check(batch: list[Row]) -> None:
        prefix = uuid.uuid4().hex[:8]
        events = [
            support.Event(
                r.aggregate_type,
                f"{prefix}-{r.aggregate}",
                r.event_type,
                r.payload,
                r.seq,
                r.topic,
                r.headers,
            )
            for r in batch
        ]
        database.insert(events)
        ids = [
            int(i)
            for (i,) in database.query(
                "SELECT id FROM outbox WHERE aggregate_id LIKE %s ORDER BY id", f"{prefix}-%"
            )
        ]
        assert len(ids) == len(batch)
        for _ in range(RUNS):
            summary = invoke(
                OUTBOX_MAX_MESSAGE_BYTES=str(MAX_BYTES),
                OUTBOX_MAX_ATTEMPTS="2",
                OUTBOX_BACKOFF_MAX_SECONDS="1",
            )
            assert summary["ok"], summary  # every invocation returns, and succeeds
            left = database.query(
                "SELECT COUNT(*) FROM outbox WHERE status = 'PENDING' AND aggregate_id LIKE %s", f"{prefix}-%"
            )
            if left == [(0,)]:
                break
        state = {
            int(i): (status, error, event_id)
            for i, status, error, event_id in database.query(
                "SELECT id, status, last_error, event_id FROM outbox WHERE aggregate_id LIKE %s",
                f"{prefix}-%",
            )
        }
        expected_good: dict[str, list[str]] = {}
        for row_id, row in zip(ids, batch, strict=True):
            status, error, event_id = state[row_id]
            if good(row, template):
                assert status == "PUBLISHED", (row, state[row_id])
                if row.aggregate_type == "order":
                    expected_good.setdefault(f"{prefix}-{row.aggregate}", []).append(event_id)
            else:
                assert status == "DEAD" and error, (row, state[row_id])
                dead_ids.append(row_id)
        # Per aggregate, the last copy of each good event is in outbox order.
        last: dict[str, int] = {}
        for n, record in enumerate(read_topics([support.KAFKA], [existing])):
            if (record.key or b"").startswith(prefix.encode()):
                last[record.headers["id"].decode()] = n
        for key, event_ids in expected_good.items():
            positions = [last[e] for e in event_ids]
            assert positions == sorted(positions), (key, event_ids, positions)

    check()
    letters = {m["outbox_id"] for m in dlq.messages()}
    assert set(dead_ids) <= letters, "every DEAD row has its dead letter"


# --- bytes a text column holds that are not text of its character set ----------------------
# What MariaDB 10.11 actually stores (probed; see the writers below): in a utf8mb4 column, the
# CESU-8 encoding of surrogates (an old driver's "modified UTF-8"), even under a strict sql_mode;
# any other invalid sequence (0xFF, a lone continuation byte, an overlong form) is refused in
# strict mode and stored as "?" otherwise, so it never reaches the relay.  In an ascii column, a
# `_binary` literal stores any byte at all, strict or not.
CESU8 = {
    "CESU-8 pair": b"\xed\xa0\xbd\xed\xb8\x80",  # U+1F600 as two surrogates
    "lone high surrogate": b"\xed\xa0\x80",
    "lone low surrogate": b"\xed\xbf\xbf",
}
HIGH_BYTES = {
    **CESU8,
    "0xFF": b"\xff",
    "lone continuation byte": b"\x80",
    "overlong /": b"\xc0\xaf",
    "overlong 3-byte": b"\xe0\x80\xaf",
    "5-byte form": b"\xf8\x88\x80\x80\x80",
    "valid UTF-8, not ASCII": "é".encode(),
}
UTF8MB4_COLUMNS = ("aggregate_type", "aggregate_id", "event_type", "headers")
ASCII_COLUMNS = ("event_id", "topic")
WRITERS = ("binary literal, strict sql_mode", "SET NAMES binary, sql_mode ''")
# Valid text (NUL included): published like any other row.
VALID_ODDITIES = {"event_id": b"nul-\x00-", "aggregate_id": b"nul-\x00-", "event_type": b"Nul\x00Type"}


def _bad_value(column: str, name: str, bad: bytes, n: int, topic: str) -> bytes:
    """A value of ``column`` holding ``bad`` where a writer would put it (amid valid text)."""
    if column == "event_id":
        return f"e{n:03d}-".encode() + bad
    if column == "aggregate_id":
        return f"bad-{n}-".encode() + bad + b"-end"
    if column == "aggregate_type":
        return b"order" + bad
    if column == "topic":
        return topic.encode() + bad
    if column == "headers":
        pad = b"x" * 5000 if name.startswith("large") else b""  # left out of the read, loaded by id
        return b'{"pad": "' + pad + b'", "trace": "t-' + bad + b'"}'
    return b"Changed" + bad


def _write(database: support.Database, writer: str, columns: dict[str, Any]) -> int:
    """One row, as a writer puts it: a `_binary` literal (what PyMySQL sends for bytes) under the
    default strict sql_mode, or raw bytes in the statement after SET NAMES binary, not strict."""
    columns = {k: v for k, v in columns.items() if v is not None}  # NULL or the default
    names = ", ".join(columns)
    with database.conn() as conn, conn.cursor() as cur:
        if writer == WRITERS[0]:
            cur.execute(
                f"INSERT INTO outbox ({names}) VALUES ({', '.join(['%s'] * len(columns))})",
                list(columns.values()),
            )
        else:
            cur.execute("SET SESSION sql_mode = ''")
            cur.execute("SET NAMES binary")
            values = b", ".join(_literal(v) for v in columns.values())
            conn.query(f"INSERT INTO outbox ({names}) VALUES (".encode() + values + b")")
        cur.execute("SELECT LAST_INSERT_ID()")
        (row_id,) = cur.fetchone() or (0,)
        return int(row_id)


def _literal(value: Any) -> bytes:
    if value is None:
        return b"NULL"
    if isinstance(value, int):
        return str(value).encode()
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"'" + raw.replace(b"\\", b"\\\\").replace(b"'", b"\\'").replace(b"\x00", b"\\0") + b"'"


def _stored(database: support.Database, row_id: int, column: str) -> bytes:
    ((value,),) = database.query(f"SELECT CAST({column} AS BINARY) FROM outbox WHERE id = %s", row_id)
    return bytes(value)


@pytest.mark.parametrize("writer", WRITERS)
def test_bytes_that_are_not_text_cost_only_their_own_row(
    database: support.Database, topics: support.Topics, dlq: support.Queue, invoke: Any, writer: str
) -> None:
    """Any text column holding bytes that are not text of its character set: every run returns ok,
    that row ends DEAD with a reason naming the column (its letter in the queue, one SQS takes),
    and every other row, of any aggregate on any shard, is published.  Also a dry run, `status`,
    and a redrive of those rows."""
    make_topics(topics, "order")
    topic = topics.name("order")
    bad: dict[int, str] = {}  # row id -> the reason expected
    cases = [(c, name, value) for c in UTF8MB4_COLUMNS for name, value in CESU8.items()]
    cases += [(c, name, value) for c in ASCII_COLUMNS for name, value in HIGH_BYTES.items()]
    cases += [("headers", f"large, {name}", value) for name, value in CESU8.items()]
    good = []
    for n, (column, name, value) in enumerate(cases):
        # Good rows before and after each bad one, on its shard and on others.
        good.append(_write(database, writer, _good_row(f"good-{n}", n)))
        row = _good_row(f"bad-{n}", n)
        row[column] = _bad_value(column, name, value, n, topic)
        row_id = _write(database, writer, row)
        assert _stored(database, row_id, column) == row[column], (column, name, "stored as written")
        charset = "ASCII" if column in ASCII_COLUMNS else "valid UTF-8"
        bad[row_id] = f"{column} is not {charset}"
        if column == "aggregate_id":  # a second row of that aggregate: dead-lettered after the first
            bad[_write(database, writer, row | {"event_id": None})] = "aggregate_id is not valid UTF-8"
        good.append(_write(database, writer, _good_row(f"good-{n}", n + 1000)))
    for column, value in VALID_ODDITIES.items():
        good.append(_write(database, writer, _good_row("odd", 0) | {column: value}))
    # A row of an undecodable aggregate in backoff: it holds its aggregate back (named in the
    # summary and by `status`), nothing else.
    waiting = _write(database, writer, _good_row("x", 0) | {"aggregate_id": b"wait-\xed\xa0\x80"})
    database.query(
        "UPDATE outbox SET attempts = 1, available_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR,"
        " last_error = 'timed out' WHERE id = %s",
        waiting,
    )
    shards = dict(database.query("SELECT id, shard FROM outbox"))
    assert {shards[i] for i in bad} <= {shards[i] for i in good}, "good rows share every bad row's shard"

    dry = invoke({"dry_run": True})
    status = invoke({"action": "status"})
    runs = [invoke(OUTBOX_BATCH_SIZE="7") for _ in range(2)]  # many passes: blocked keys go back to SQL

    for result in (dry, status, *runs):
        assert result["ok"], result
        json.dumps(result, ensure_ascii=False).encode()  # a Lambda response: valid UTF-8 JSON
    assert dry["would_publish"] > 0
    assert status["pending"] == len(bad) + len(good) + 1
    assert [b["aggregate_id"] for b in status["blocked"]] == ["wait-\\xed\\xa0\\x80"]
    assert runs[0]["published"] == len(good) and runs[0]["dead_lettered"] == len(bad), runs[0]
    assert runs[1]["published"] == runs[1]["dead_lettered"] == 0, runs[1]
    assert {b["aggregate_id"] for b in runs[0]["blocked"]} == {"wait-\\xed\\xa0\\x80"}
    rows = {r["id"]: r for r in database.rows()}
    for row_id, why in bad.items():
        assert rows[row_id]["status"] == "DEAD" and why in rows[row_id]["last_error"], rows[row_id]
    assert all(rows[i]["status"] == "PUBLISHED" for i in good)
    assert rows[waiting]["status"] == "PENDING"

    bodies = dlq.bodies()
    for body in bodies:
        assert sqs_accepts(body, DEFAULT_MAX_MESSAGE_BYTES), body
    letters = {json.loads(b)["outbox_id"]: json.loads(b) for b in bodies}
    assert set(letters) == set(bad)
    for row_id, letter in letters.items():  # lossless: the letter names the bytes stored
        assert letter["aggregate_id"].encode("utf-8", "surrogateescape") == _stored(
            database, row_id, "aggregate_id"
        )
        assert letter["event_id"].encode("utf-8", "surrogateescape") == _stored(database, row_id, "event_id")

    published = {
        bytes(e)
        for (e,) in database.query("SELECT CAST(event_id AS BINARY) FROM outbox WHERE status = 'PUBLISHED'")
    }
    records = topics.read("order")
    assert {r.headers["id"] for r in records} == published
    assert all(not (r.key or b"").startswith(b"bad-") for r in records), "nothing of a bad row is sent"

    redriven = invoke({"action": "redrive", "ids": sorted(bad)})
    assert redriven["ok"] and redriven["redriven"] == len(bad), redriven
    again = invoke()
    assert again["ok"] and again["dead_lettered"] == len(bad), again


def _good_row(aggregate: str, n: int) -> dict[str, Any]:
    return {
        "event_id": None,
        "aggregate_type": "order",
        "aggregate_id": aggregate,
        "event_type": "Changed",
        "payload": json.dumps({"n": n}).encode(),
        "topic": None,
        "headers": None,
    }


# Any bytes an ascii column can hold; text with UTF-8-encoded surrogates for a utf8mb4 column (all
# MariaDB keeps of invalid UTF-8).  CHAR(36) drops trailing spaces on read, as for any value.
ASCII_BYTES = st.binary(max_size=30).filter(lambda b: not b.endswith(b" "))
UTF8MB4_BYTES = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=4).map(str.encode),
        st.integers(0xD800, 0xDFFF).map(lambda c: chr(c).encode("utf-8", "surrogatepass")),
    ),
    max_size=6,
).map(b"".join)


def test_the_store_reads_any_bytes_losslessly_and_gives_keys_back_to_sql_as_those_bytes(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    """Whatever the text columns hold, every read of the store answers, each value is the bytes
    stored (no replacement), and an aggregate key given back to SQL (``skip``) matches its own
    bytes: that aggregate's rows alone are left out."""
    store = MySQLOutboxStore(connector(load_config(relay_env).database), OutboxSql())
    count = iter(range(10**6))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(event_id=ASCII_BYTES, topic=ASCII_BYTES, texts=st.tuples(*[UTF8MB4_BYTES] * 4))
    def check(event_id: bytes, topic: bytes, texts: tuple[bytes, bytes, bytes, bytes]) -> None:
        n = next(count)
        aggregate_type, aggregate_id, event_type, headers = texts
        row = {
            "event_id": b"%05d" % n + event_id,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "event_type": event_type,
            "payload": b"{}",
            "topic": topic,
            "headers": headers + b"h" * 4100 * (n % 2),  # every other one loaded by id
        }
        row_id = _write(database, WRITERS[0], row)
        ((shard,),) = database.query("SELECT shard FROM outbox WHERE id = %s", row_id)
        (record,) = [r for r in store.read_heads({shard: row_id - 1}, 5) if r.id == row_id]
        if not record.loaded:
            record = with_bodies(store, [record], set(), None, 10**6, 10**6)[0]
        read = {
            "event_id": record.event_id,
            "aggregate_type": record.aggregate_type,
            "aggregate_id": record.aggregate_id,
            "event_type": record.event_type,
            "topic": record.topic,
            "headers": record.headers,
        }
        assert {k: raw(v or "") for k, v in read.items()} == {k: v for k, v in row.items() if k != "payload"}
        assert record.key in {r.key for r in store.read_due_heads([shard], 5)}  # found by its bytes
        assert row_id not in {
            r.id for r in store.read_heads({shard: row_id - 1}, 5, skip={shard: [record.key]})
        }
        database.query("UPDATE outbox SET status = 'PUBLISHED' WHERE id = %s", row_id)

    check()
    store.close()


def test_a_reason_quoting_bytes_that_are_not_text_is_stored_escaped(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    """A finalize stores any reason (PyMySQL encodes statements strictly): one quoting a row's
    undecodable bytes is stored with them escaped, never failing the run's finalize."""
    database.insert(
        [support.Event("order", "A", "Changed", b"{}"), support.Event("order", "B", "Changed", b"{}")]
    )
    first, second = (int(i) for (i,) in database.query("SELECT id FROM outbox ORDER BY id"))
    store = MySQLOutboxStore(connector(load_config(relay_env).database), OutboxSql())
    token = uuid.uuid4().bytes
    shards = store.acquire_shards(token, "test", 30, 0, ())
    why = decode(b"aggregate_id k\xed\xa0\x80" + b"\xff" * 1000)  # escaped: 4 times as long
    plan = FinalizePlan(dead=[(first, why)], retries=[RetryDecision(second, 5.0, why, True, 0)])
    result = store.finalize(token, shards, plan, 30)
    store.release(token, None, 0)
    assert (result.dead, result.retried) == (1, 1)
    escaped = "aggregate_id k\\xed\\xa0\\x80" + "\\xff" * 1000
    assert {r["last_error"] for r in database.rows()} == {escaped[:1024]}, "escaped, then cut to the column"
