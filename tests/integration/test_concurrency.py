"""Guarantees: concurrent invocations never publish the same claim twice at once; a stale
invocation cannot finalize (fencing by lease token, database clock)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from typing import Any

from outbox_relay.config import load_config
from outbox_relay.db import connector
from outbox_relay.kafka_tools import read_topics
from outbox_relay.model import DeadLetter, Delivery, Message
from outbox_relay.ports import Acknowledged, NullMetrics, Settled, SystemClock
from outbox_relay.publisher_kafka import KafkaPublisher
from outbox_relay.relay import Relay
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import MySQLOutboxStore
from tests import support
from tests.conftest import make_topics


def test_four_parallel_invocations_lose_nothing_keep_order_and_never_double_finalize(
    database: support.Database, topics: support.Topics, relay_env: dict[str, str]
) -> None:
    events = support.backlog(10_000, 200)
    database.insert(events)
    database.install_audit()
    make_topics(topics, "order")
    # Four shards at a time each, so that the four invocations really share the backlog.
    env = {**relay_env, "OUTBOX_MAX_SHARDS_PER_RUN": "4", "OUTBOX_BATCH_SIZE": "200"}

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        summaries = pool.starmap(support.handler_in_process, [(env, 120.0)] * 4)

    assert all(s["ok"] for s in summaries), summaries
    published = [s["published"] for s in summaries]
    assert sum(published) == 10_000, published
    assert sum(1 for n in published if n > 0) >= 2, f"the work was not shared: {published}"
    assert database.status_counts() == {"PUBLISHED": 10_000}
    transitions = database.query(
        "SELECT id, COUNT(*) FROM status_audit WHERE new_status = 'PUBLISHED' GROUP BY id HAVING COUNT(*) > 1"
    )
    assert transitions == [], "a row was finalized twice"
    (count,) = database.query("SELECT COUNT(DISTINCT id) FROM status_audit WHERE new_status = 'PUBLISHED'")
    assert count == (10_000,)

    delivered = support.Delivered(topics.read("order"))
    assert len(delivered.copies()) == 10_000
    assert set(delivered.copies().values()) == {1}, "no claim was published twice"
    assert delivered.order_violations() == 0


class _TakeoverDuringFlush:
    """A real Kafka publisher; after its sends are acknowledged, and before the relay finalizes,
    the lease is forced to expire in SQL and another invocation takes the shards over."""

    def __init__(self, inner: KafkaPublisher, on_published: Any) -> None:
        self.inner = inner
        self.on_published = on_published
        self.fired = False

    @property
    def in_doubt(self) -> bool:
        return self.inner.in_doubt

    def new_run(self) -> None:
        self.inner.new_run()

    def close(self) -> None:
        self.inner.close()

    def send(self, messages: Sequence[Message], deadline: float) -> Settled:
        results = self.inner.send(messages, deadline).wait(deadline)
        if not self.fired and messages:
            self.fired = True
            assert all(r.delivery is Delivery.DELIVERED for r in results)
            self.on_published()
        return Settled(results)


def test_stale_lease_cannot_finalize_and_the_taker_over_publishes(
    database: support.Database, topics: support.Topics, relay_env: dict[str, str], invoke: Any
) -> None:
    events = support.backlog(300, 20)
    database.insert(events)
    make_topics(topics, "order")
    config = load_config(relay_env)
    store = MySQLOutboxStore(connector(config.database), OutboxSql())
    takeover: dict[str, Any] = {}

    def expire_and_take_over() -> None:
        database.query("UPDATE outbox_shard SET lease_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
        takeover.update(invoke(timeout=60))

    stale = Relay(
        store,
        _TakeoverDuringFlush(KafkaPublisher(config.kafka), expire_and_take_over),
        _NoDeadLetters(),
        NullMetrics(),
        SystemClock(),
        config.relay,
        owner="stale",
    )
    before = database.query(
        "SELECT id, status, attempts, published_at FROM outbox WHERE status = 'PUBLISHED'"
    )
    assert before == []

    summary = stale.run(SystemClock().monotonic() + 30)

    assert takeover["ok"] and takeover["published"] == 300, takeover
    assert summary.published == 0, "the stale invocation finalized nothing"
    assert summary.lease_lost == 16
    assert database.status_counts() == {"PUBLISHED": 300}
    delivered = support.Delivered(read_topics([support.KAFKA], [topics.name("order")]))
    assert len(delivered.copies()) == 300, "no loss"
    assert delivered.order_violations() == 0
    assert max(delivered.copies().values()) == 2, "the stale batch was duplicated, with the same ids"
    store.close()


class _NoDeadLetters:
    def send(
        self, letters: Sequence[DeadLetter], acknowledged: Acknowledged | None = None
    ) -> list[str | None]:
        raise AssertionError("nothing here should be dead-lettered")
