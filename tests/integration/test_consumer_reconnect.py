"""The consumer helper over months, on the real MariaDB: a connection killed between events is
replaced and no event is applied twice; a COMMIT whose answer is lost is told apart (and the
event settled by processing it again); ``forget_older_than`` refuses a bad age or batch before
anything is deleted."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from outbox_relay.consumer import CommitOutcomeUnknown, IdempotentConsumer
from tests import support

Record = support.ConsumerRecord


def record(offset: int) -> Record:
    return Record("orders.events", 0, offset, (("id", f"event-{offset}".encode()),))


class Connections:
    """The consumer's connection factory; remembers each connection's server-side id."""

    def __init__(self, database: support.Database, port: int = support.DB_PORT) -> None:
        self.database, self.port, self.ids = database, port, list[int]()

    def __call__(self) -> Any:
        conn = pymysql.connect(
            host=support.DB_HOST,
            port=self.port,
            user=support.DB_USER,
            password=support.DB_PASSWORD,
            database=self.database.name,
            autocommit=False,
            read_timeout=10,
            ssl_disabled=True,  # in plain text, so that CommitCutter can spot the COMMIT
        )
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (connection_id,) = cur.fetchone() or (0,)
            self.ids.append(int(connection_id))
        conn.commit()
        return conn


def kill(connection_id: int) -> None:
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"KILL CONNECTION {int(connection_id)}")


@pytest.fixture
def counted(database: support.Database) -> support.Database:
    """``database`` with a table counting how often each event was applied."""
    database.query("CREATE TABLE applied (event_id VARCHAR(36) PRIMARY KEY, times INT NOT NULL)")
    return database


def count(conn: Any, r: Any) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO applied VALUES (%s, 1) ON DUPLICATE KEY UPDATE times = times + 1",
            (dict(r.headers)["id"].decode(),),
        )


def times(database: support.Database) -> dict[str, int]:
    return {name: int(n) for name, n in database.query("SELECT event_id, times FROM applied")}


def test_a_connection_killed_between_events_is_replaced(counted: support.Database) -> None:
    connections = Connections(counted)
    consumer = IdempotentConsumer(connections)
    consumer.ensure_table()
    assert consumer.process(record(1), count) is True
    kill(connections.ids[-1])  # failover, idle timeout, a proxy: the server ends the session
    assert consumer.process(record(2), count) is True
    kill(connections.ids[-1])
    assert [consumer.process(record(n), count) for n in (1, 2, 3)] == [False, False, True]
    consumer.close()
    assert times(counted) == {"event-1": 1, "event-2": 1, "event-3": 1}
    assert len(connections.ids) == 3, "one fresh connection after each kill"


def test_a_connection_killed_inside_an_event_is_never_retried_by_the_helper(
    counted: support.Database,
) -> None:
    connections = Connections(counted)
    consumer = IdempotentConsumer(connections)
    consumer.ensure_table()

    def count_then_die(conn: Any, r: Any) -> None:
        count(conn, r)
        kill(connections.ids[-1])  # the COMMIT goes to a dead session

    with pytest.raises(CommitOutcomeUnknown, match="outcome unknown: the event may have been recorded"):
        consumer.process(record(1), count_then_die)
    assert times(counted) == {}, "the session died before its COMMIT: nothing was recorded"
    # What the application does: process the redelivered record again; here it is applied.
    assert consumer.process(record(1), count) is True
    assert consumer.process(record(1), count) is False
    consumer.close()
    assert times(counted) == {"event-1": 1}


class CommitCutter(support.DelayProxy):
    """MariaDB behind a proxy that, once ``armed``, lets the next COMMIT reach the server and
    cuts the connection before the server's answer gets back: committed, but not told so."""

    def __init__(self) -> None:
        self.armed = False
        self._answering = False
        super().__init__(port=0, upstream=(support.DB_HOST, support.DB_PORT))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if not delayed and self.armed and b"\x03COMMIT" in chunk:  # COM_QUERY COMMIT
                    self.armed, self._answering = False, True
                elif delayed and self._answering:
                    self._answering = False
                    return  # the answer is dropped; both sockets are closed below
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.fixture
def cutter() -> Iterator[CommitCutter]:
    proxy = CommitCutter()
    yield proxy
    proxy.close()


def test_a_commit_whose_answer_is_lost_is_reported_and_settled_by_processing_again(
    counted: support.Database, cutter: CommitCutter
) -> None:
    consumer = IdempotentConsumer(Connections(counted, port=cutter.port))
    consumer.ensure_table()
    cutter.armed = True
    with pytest.raises(CommitOutcomeUnknown) as caught:
        consumer.process(record(1), count)
    assert isinstance(caught.value.__cause__, pymysql.err.OperationalError)
    assert caught.value.__cause__.args[0] == 2013
    assert times(counted) == {"event-1": 1}, "the COMMIT landed"
    # Processed again (the redelivery), it is recognised: applied exactly once.
    assert consumer.process(record(1), count) is False
    assert consumer.process(record(2), count) is True
    consumer.close()
    assert times(counted) == {"event-1": 1, "event-2": 1}


def test_forget_older_than_refuses_bad_arguments_before_deleting_anything(
    database: support.Database,
) -> None:
    connections = Connections(database)
    consumer = IdempotentConsumer(connections)
    consumer.ensure_table()
    for n in range(5):
        assert consumer.process(record(n), lambda conn, r: None)
    database.query(
        "UPDATE processed_events SET processed_at = processed_at - INTERVAL 2 DAY WHERE kafka_offset < 3"
    )
    opened = len(connections.ids)
    # A negative age used to delete every id (and a redelivered event was applied again); a
    # batch of 0 looped for ever.
    for seconds, batch in [(-60, 1000), (0, 1000), (59, 1000), (float("nan"), 1000), (3600, 0), (3600, -5)]:
        with pytest.raises(ValueError, match=r"^forget_older_than: "):
            consumer.forget_older_than(seconds, batch=batch)
    with pytest.raises(TypeError, match=r"^forget_older_than: "):
        consumer.forget_older_than(True)  # a bool is not a number of seconds
    assert database.query("SELECT COUNT(*) FROM processed_events") == [(5,)]
    assert len(connections.ids) == opened
    # In batches of one, down to a cutoff read once: the three old ids only.
    assert consumer.forget_older_than(86_400, batch=1) == 3
    consumer.close()
    offsets = database.query("SELECT kafka_offset FROM processed_events ORDER BY kafka_offset")
    assert offsets == [(3,), (4,)]
