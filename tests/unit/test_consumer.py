"""The consumer helper without a database: which ``id`` headers are keys, and how the claim's
errors are told apart (duplicate key = already processed; anything else propagates)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.consumer import (
    MAX_EVENT_ID,
    MAX_SCOPE,
    EventIdError,
    IdempotentConsumer,
    InvalidEventId,
    MissingEventId,
    event_id_of,
)
from outbox_relay.sql import ProcessedEventsSql
from tests.unit.test_sql_portability import FORBIDDEN

UUID = "0b6c7c1e-0000-4000-8000-000000000001"


@dataclass(frozen=True)
class Record:
    headers: Sequence[tuple[str, bytes | None]]
    topic: str = "orders.events"
    partition: int = 2
    offset: int = 41


def with_id(raw: bytes | None, topic: str = "orders.events") -> Record:
    return Record((("event_type", b"OrderPaid"), ("id", raw)), topic=topic)


def oracle(raw: bytes) -> bool:
    """The contract, spelled independently of the implementation."""
    return 1 <= len(raw) <= 36 and all(32 <= b <= 126 for b in raw)


@pytest.mark.parametrize("value", [UUID, "x", "a" * 36, "order-42 paid", " lead", "trail ", "~!{}"])
def test_printable_ascii_ids_up_to_36_are_keys(value: str) -> None:
    assert event_id_of(with_id(value.encode())) == value


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "is empty"),
        (b"a" * 37, "is 37 bytes, over 36"),
        (UUID.encode() + b"-extra", "is 42 bytes, over 36"),
        ("ordre-é".encode(), "is not printable ASCII"),
        (b"\xff\xfe", "is not printable ASCII"),
        (b"a\x00b", "is not printable ASCII"),
        (b"line\n", "is not printable ASCII"),
        (b"\x7f", "is not printable ASCII"),
        (None, "has an 'id' header without a value"),
    ],
)
def test_other_ids_are_refused_never_truncated(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEventId) as caught:
        event_id_of(with_id(raw))
    error = caught.value
    assert str(error).startswith("orders.events[2]@41 ") and str(error).endswith(reason)
    assert (error.topic, error.partition, error.offset, isinstance(error, ValueError)) == (
        "orders.events",
        2,
        41,
        True,
    )


def test_a_long_id_is_quoted_shortened_in_the_error() -> None:
    with pytest.raises(InvalidEventId, match=r"'id' header b'a{48}'\.\.\. is 5000 bytes, over 36$"):
        event_id_of(with_id(b"a" * 5000))


def test_missing_and_repeated_id_headers() -> None:
    with pytest.raises(MissingEventId, match=r"^orders.events\[2\]@41 has no 'id' header$"):
        event_id_of(Record((("other", b"x"),)))
    with pytest.raises(InvalidEventId, match="has 2 'id' headers"):
        event_id_of(Record((("id", UUID.encode()), ("id", UUID.encode()))))
    assert issubclass(MissingEventId, EventIdError) and issubclass(InvalidEventId, EventIdError)


@given(st.binary(max_size=64))
def test_every_header_is_either_its_own_exact_key_or_refused(raw: bytes) -> None:
    try:
        key = event_id_of(with_id(raw))
    except InvalidEventId:
        assert not oracle(raw)
    else:  # lossless: the key encodes back to the very bytes, so distinct headers never meet
        assert oracle(raw) and key.encode("ascii") == raw


def test_the_limits_are_the_tables_columns() -> None:
    create = ProcessedEventsSql().create
    assert f"event_id VARBINARY({MAX_EVENT_ID}) NOT NULL" in create
    assert f"scope VARBINARY({MAX_SCOPE}) NOT NULL" in create
    assert "PRIMARY KEY (scope, event_id)" in create
    assert MAX_EVENT_ID == 36, "the outbox's event_id is CHAR(36): every relayed id must fit"
    assert MAX_SCOPE == 249, "a Kafka topic name (the default scope) must fit"


def test_the_statements_are_portable() -> None:
    sql = ProcessedEventsSql()
    for name in ("create", "claim", "forget_older_than", "primary_key_columns", "column_types"):
        text = getattr(sql, name)
        for pattern, why in FORBIDDEN.items():
            assert not re.search(pattern, text, re.IGNORECASE), f"{name}: {why}"
    for name in ("add_scope", "scope_from_topic", "scope_fixed", "rekey"):
        assert f"`{sql.table}`" in getattr(sql, name)
    assert sql.claim.startswith("INSERT INTO"), "a plain INSERT: IGNORE would also hide truncation"


@pytest.mark.parametrize("scope", ["", "x" * 250, "svc\n", "sérvice", "\ud800"])
def test_a_scope_that_would_not_fit_exactly_is_refused(scope: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        IdempotentConsumer(lambda: None, scope=scope)


@dataclass
class Conn:
    """Enough of a PyMySQL connection: ``fail`` is what the claim's INSERT raises."""

    fail: BaseException | None = None
    log: list[str] = field(default_factory=list)

    def autocommit(self, value: bool) -> None:
        self.log.append(f"autocommit {value}")

    def begin(self) -> None:
        self.log.append("begin")

    def commit(self) -> None:
        self.log.append("commit")

    def rollback(self) -> None:
        self.log.append("rollback")

    def cursor(self) -> Conn:
        return self

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str, params: Any = None) -> int:
        self.log.append(f"execute {params!r}")
        if self.fail is not None:
            raise self.fail
        return 1


def test_a_duplicate_key_is_already_processed() -> None:
    conn = Conn(pymysql.err.IntegrityError(1062, "Duplicate entry"))
    applied: list[int] = []
    consumer = IdempotentConsumer(lambda: conn)
    assert consumer.process(with_id(UUID.encode()), lambda c, r: applied.append(r.offset)) is False
    assert applied == [] and conn.log[-1] == "rollback"


def test_any_other_integrity_error_propagates() -> None:
    conn = Conn(pymysql.err.IntegrityError(1452, "Cannot add or update a child row"))
    consumer = IdempotentConsumer(lambda: conn)
    with pytest.raises(pymysql.err.IntegrityError) as caught:
        consumer.process(with_id(UUID.encode()), lambda c, r: None)
    assert caught.value.args[0] == 1452 and conn.log[-1] == "rollback"


def test_the_key_is_scope_then_id() -> None:
    conn = Conn()
    IdempotentConsumer(lambda: conn).process(with_id(UUID.encode(), "a.topic"), lambda c, r: None)
    IdempotentConsumer(lambda: conn, scope="orders-outbox").process(with_id(b"x"), lambda c, r: None)
    claims = [line for line in conn.log if line.startswith("execute")]
    assert claims == [
        f"execute ('a.topic', '{UUID}', 'a.topic', 2, 41)",
        "execute ('orders-outbox', 'x', 'orders.events', 2, 41)",
    ]


def test_a_refused_id_touches_no_connection() -> None:
    opened: list[Conn] = []

    def connect() -> Conn:
        opened.append(Conn())
        return opened[-1]

    consumer = IdempotentConsumer(connect)
    with pytest.raises(InvalidEventId):
        consumer.process(with_id(b"a" * 37), lambda c, r: None)
    assert opened == []
