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

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay.kafka_tools import read_topics
from tests import support
from tests.conftest import make_topics

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
