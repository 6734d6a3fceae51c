"""Latency below the schedule: with the poll window on, events committed while the relay runs
are readable in Kafka in well under a second."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from tests import support
from tests.conftest import make_topics

EVENTS = 400
EVERY_SECONDS = 0.02


def test_poll_window_p99_commit_to_kafka_is_under_a_second_for_a_steady_trickle(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    make_topics(topics, "order")
    topic = topics.name("order")
    committed: dict[str, float] = {}
    received: dict[str, float] = {}
    stop = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=[support.KAFKA], enable_auto_commit=False, fetch_max_wait_ms=10
        )
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=20).values():
                now = time.time()
                for r in records:
                    received.setdefault(dict(r.headers)["id"].decode(), now)
        consumer.close()

    def write() -> None:
        conn = database.conn()
        with conn.cursor() as cur:
            for n in range(EVENTS):
                cur.execute("SELECT UUID()")
                (event_id,) = cur.fetchone() or ("",)
                cur.execute(
                    "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload)"
                    " VALUES (%s, 'order', %s, 'Tick', %s)",
                    (event_id, f"order-{n % 20}", f'{{"n": {n}}}'),
                )
                committed[event_id] = time.time()  # autocommit: the INSERT has committed
                time.sleep(EVERY_SECONDS)
        conn.close()

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(1.0)  # the consumer has its partitions
    summaries: list[dict[str, Any]] = []
    relay = threading.Thread(
        target=lambda: summaries.append(
            invoke(timeout=25, OUTBOX_POLL_WINDOW_SECONDS="14", OUTBOX_POLL_INTERVAL_MS="50")
        )
    )
    relay.start()
    time.sleep(0.5)
    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    assert support.wait_until(lambda: len(received) >= EVENTS, timeout=10)
    stop.set()
    reader.join()
    relay.join()

    (summary,) = summaries
    assert summary["ok"] and summary["published"] == EVENTS, summary
    delays = sorted(received[e] - committed[e] for e in committed)
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99) - 1]
    print(
        f"\ncommit -> readable in Kafka over {EVENTS} events: p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms"
    )
    assert p99 < 1.0


def test_a_poll_window_at_the_shard_limit_moves_round_the_outbox(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    """Found by the simulation (tests/sim): with a shard limit and a poll window, a run that had
    drained its shards polled them until its deadline while every other shard had a backlog."""
    make_topics(topics, "order")
    database.insert([support.Event("order", f"order-{n}", "Tick", b"{}") for n in range(64)])
    shards = {s for (s,) in database.query("SELECT DISTINCT shard FROM outbox")}
    assert len(shards) > 4
    # A window longer than the invocation: it is cut to the deadline, and polls until then.
    result = invoke({"poll_window_seconds": 60}, timeout=6.0, OUTBOX_MAX_SHARDS_PER_RUN="2")
    assert result["ok"], result
    assert result["published"] == 64, f"one 6 s run published {result['published']} of 64"
    assert result["shards"] >= len(shards)
