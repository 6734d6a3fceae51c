"""An idempotent consumer of the order events: a projection of orders per customer.

    python examples/order_consumer.py        # reads outbox.event.order until idle for 5 s

Each event's effect and its id are committed together (outbox_relay.consumer), so an event the
relay published twice is applied once; Kafka offsets are committed after the database.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kafka import KafkaConsumer

from outbox_relay.config import load_database_settings
from outbox_relay.consumer import IdempotentConsumer
from outbox_relay.db import connector


def connect() -> Any:
    """A connection from the same OUTBOX_DB_* settings as the relay, in explicit transactions."""
    conn = connector(load_database_settings(os.environ))()
    conn.autocommit(False)
    return conn


def apply(conn: Any, record: Any) -> None:
    """The consumer's own change, in the transaction that records the event id."""
    order = json.loads(record.value)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO customer_orders (customer, orders, total_cents) VALUES (%s, 1, %s)"
            " ON DUPLICATE KEY UPDATE orders = orders + 1, total_cents = total_cents + VALUES(total_cents)",
            (order["customer"], order["totalCents"]),
        )


def main() -> None:
    consumer = IdempotentConsumer(connect)
    consumer.ensure_table()
    with consumer.connection().cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS customer_orders (customer VARCHAR(64) PRIMARY KEY,"
            " orders INT NOT NULL, total_cents BIGINT NOT NULL) ENGINE=InnoDB"
        )
    consumer.connection().commit()
    kafka = KafkaConsumer(
        "outbox.event.order",
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(","),
        group_id="customer-orders-projection",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    applied = skipped = 0
    for record in kafka:
        if consumer.process(record, apply):
            applied += 1
        else:
            skipped += 1
        kafka.commit()
    print(f"applied {applied} event(s), skipped {skipped} duplicate(s)")
    kafka.close()
    consumer.close()


if __name__ == "__main__":
    main()
