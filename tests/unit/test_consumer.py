"""The consumer helper without a database: which ``id`` headers are keys, how the claim's
errors are told apart (duplicate key = already processed; anything else propagates), when a
lost connection is replaced (only before an event begins), a lost COMMIT answer, and
``forget_older_than``'s arguments."""

from __future__ import annotations

import datetime
import math
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
    MAX_FORGET_BATCH,
    MAX_FORGET_SECONDS,
    MAX_SCOPE,
    MIN_FORGET_SECONDS,
    CommitOutcomeUnknown,
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
    names = ("create", "claim", "forget_cutoff", "forget_older_than", "primary_key_columns", "column_types")
    for name in names:
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


# --- a connection lost, a COMMIT's answer lost ------------------------------------------------

CUTOFF = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456)


def lost() -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")


def gone() -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(2006, "MySQL server has gone away")


def closed() -> pymysql.err.InterfaceError:
    return pymysql.err.InterfaceError(0, "")  # PyMySQL's error on a connection it closed


@dataclass
class Flaky(Conn):
    """A Conn whose operations fail as scripted: ``errors[op]`` (begin, claim, commit, rollback)
    is raised once.  A discarded (closed) connection must never be used again."""

    errors: dict[str, BaseException] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)  # rows each DELETE reports
    closed: bool = False

    def _op(self, name: str) -> None:
        assert not self.closed, f"{name} on a discarded connection"
        self.log.append(name)
        error = self.errors.pop(name, None)
        if error is not None:
            raise error

    def begin(self) -> None:
        self._op("begin")

    def commit(self) -> None:
        self._op("commit")

    def rollback(self) -> None:
        self._op("rollback")

    def close(self) -> None:
        self.closed = True

    def execute(self, sql: str, params: Any = None) -> int:
        if sql.startswith("SELECT UTC_TIMESTAMP"):
            self.log.append(f"cutoff {params!r}")
            return 1
        if sql.startswith("DELETE"):
            self.log.append(f"delete {params!r}")
            return self.deletes.pop(0)
        self._op("claim")
        return 1

    def fetchone(self) -> tuple[datetime.datetime]:
        return (CUTOFF,)


class Opener:
    """The connection factory: returns (or raises) what it was given, in order, and no more."""

    def __init__(self, *script: Flaky | BaseException) -> None:
        self.script = list(script)
        self.opened: list[Flaky] = []

    def __call__(self) -> Flaky:
        assert self.script, "opened more connections than expected"
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        self.opened.append(item)
        return item


def record(offset: int) -> Record:
    return Record((("id", f"event-{offset}".encode()),), offset=offset)


def applied_to(applied: list[int]) -> Any:
    return lambda conn, r: applied.append(r.offset)


@pytest.mark.parametrize("error", [lost, gone, closed])
def test_a_connection_gone_between_events_is_replaced(error: Any) -> None:
    first, second = Flaky(), Flaky()
    opener, applied = Opener(first, second), list[int]()
    consumer = IdempotentConsumer(opener)
    assert consumer.process(record(1), applied_to(applied)) is True
    first.errors["begin"] = error()  # dropped while idle: found out by the next BEGIN
    assert consumer.process(record(2), applied_to(applied)) is True
    assert consumer.process(record(3), applied_to(applied)) is True
    assert applied == [1, 2, 3] and opener.opened == [first, second] and first.closed
    assert second.log == ["autocommit False", *["begin", "claim", "commit"] * 2]


def test_reopening_is_bounded_and_its_errors_surface() -> None:
    refused = pymysql.err.OperationalError(2003, "Can't connect to MySQL server")
    first, third = Flaky(errors={"begin": lost()}), Flaky(errors={"begin": gone()})
    opener, applied = Opener(first, refused, third, Flaky()), list[int]()
    consumer = IdempotentConsumer(opener)
    consumer.connection()
    # The stale connection is replaced once; the new one cannot be opened: that error, with
    # the first as its context.
    with pytest.raises(pymysql.err.OperationalError) as caught:
        consumer.process(record(1), applied_to(applied))
    assert caught.value is refused and isinstance(caught.value.__context__, pymysql.err.OperationalError)
    # A fresh connection that fails at once is not replaced again in the same call.
    with pytest.raises(pymysql.err.OperationalError, match="gone away"):
        consumer.process(record(1), applied_to(applied))
    assert third.closed and applied == []
    assert consumer.process(record(1), applied_to(applied)) is True
    assert applied == [1] and opener.script == []
    # Any other error at BEGIN is not a lost connection: raised, the connection kept.
    opener.opened[-1].errors["begin"] = pymysql.err.OperationalError(1792, "read-only transaction")
    with pytest.raises(pymysql.err.OperationalError, match="read-only"):
        consumer.process(record(2), applied_to(applied))
    assert consumer.process(record(2), applied_to(applied)) is True
    assert applied == [1, 2] and len(opener.opened) == 3


@pytest.mark.parametrize("where", ["claim", "apply"])
def test_an_event_begun_is_never_retried_and_the_rollback_hides_nothing(where: str) -> None:
    first, second = Flaky(errors={"rollback": closed()}), Flaky()
    if where == "claim":
        first.errors["claim"] = lost()
    opener, applied = Opener(first, second), list[int]()

    def apply(conn: Any, r: Any) -> None:
        applied.append(r.offset)
        if where == "apply" and len(applied) == 1:
            raise lost()

    consumer = IdempotentConsumer(opener)
    with pytest.raises(pymysql.err.OperationalError) as caught:
        consumer.process(record(1), apply)
    assert caught.value.args[0] == 2013, "the error, not the failed rollback's"
    assert first.log.count("claim") == 1 and first.closed and len(opener.opened) == 1
    assert consumer.process(record(1), apply) is True  # the application's redelivery
    assert applied == ([1] if where == "claim" else [1, 1]) and opener.opened == [first, second]


@pytest.mark.parametrize("error", [lost, gone, closed])
def test_a_lost_commit_answer_is_its_own_error(error: Any) -> None:
    first, second = Flaky(errors={"commit": error(), "rollback": closed()}), Flaky()
    opener, applied = Opener(first, second), list[int]()
    consumer = IdempotentConsumer(opener, scope="orders-outbox")
    with pytest.raises(CommitOutcomeUnknown) as caught:
        consumer.process(record(7), applied_to(applied))
    unknown = caught.value
    cause = unknown.__cause__
    assert type(cause) is type(error()) and cause is not None and cause.args == error().args
    assert "outcome unknown: the event may have been recorded" in str(unknown)
    assert str(unknown).startswith("orders.events[2]@7 (scope 'orders-outbox', id 'event-7')")
    assert (unknown.topic, unknown.partition, unknown.offset) == ("orders.events", 2, 7)
    assert (unknown.scope, unknown.event_id) == ("orders-outbox", "event-7")
    assert not isinstance(unknown, EventIdError), "something may have been written"
    assert first.log.count("commit") == 1 and first.closed and applied == [7]
    # Processing it again settles it, on a fresh connection.
    assert consumer.process(record(7), applied_to(applied)) is True
    assert opener.opened == [first, second]


def test_other_commit_failures() -> None:
    conn = Flaky(errors={"commit": pymysql.err.OperationalError(1213, "Deadlock found")})
    consumer = IdempotentConsumer(Opener(conn))
    with pytest.raises(pymysql.err.OperationalError, match="Deadlock"):  # known: not committed
        consumer.process(record(1), applied_to([]))
    assert conn.log[-2:] == ["commit", "rollback"] and not conn.closed
    # Interrupted in COMMIT, the connection may hold an unread answer: dropped, not reused.
    conn.errors["commit"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        consumer.process(record(1), applied_to([]))
    assert conn.log[-1] == "commit" and conn.closed


# --- forget_older_than ------------------------------------------------------------------------


def untouched() -> Any:
    raise AssertionError("the database was touched")


@pytest.mark.parametrize(
    ("seconds", "batch", "error", "match"),
    [
        (-60, 1000, ValueError, "-60"),
        (0, 1000, ValueError, "seconds must be 3600 to"),
        (MIN_FORGET_SECONDS - 1, 1000, ValueError, "3599"),
        (MAX_FORGET_SECONDS + 1, 1000, ValueError, "seconds"),
        (math.nan, 1000, ValueError, "nan"),
        (math.inf, 1000, ValueError, "inf"),
        (-math.inf, 1000, ValueError, "inf"),
        (True, 1000, TypeError, "bool"),
        ("3600", 1000, TypeError, "str"),
        (None, 1000, TypeError, "NoneType"),
        (3600, 0, ValueError, "batch must be 1 to"),
        (3600, -1, ValueError, "batch"),
        (3600, MAX_FORGET_BATCH + 1, ValueError, "batch"),
        (3600, True, TypeError, "bool"),
        (3600, 10.0, TypeError, "float"),
    ],
)
def test_forget_older_than_refuses_bad_arguments_before_touching_the_database(
    seconds: Any, batch: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as caught:
        IdempotentConsumer(untouched).forget_older_than(seconds, batch=batch)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("forget_older_than: ")


def test_forget_older_than_deletes_in_batches_up_to_a_cutoff_read_once() -> None:
    conn = Flaky(deletes=[2, 2, 1])
    week = datetime.timedelta(days=7).total_seconds()  # a float: accepted
    assert IdempotentConsumer(Opener(conn)).forget_older_than(week, batch=2) == 5
    assert [line for line in conn.log if not line.startswith(("autocommit", "begin", "commit"))] == [
        "cutoff (604800.0,)",
        *[f"delete ({CUTOFF!r}, 2)"] * 3,
    ]
    assert conn.log.count("commit") == 4
