"""The seed's `createOrder` scenario: the order and its event are written in ONE transaction.

    python examples/orders_demo.py write 5     # 5 orders, each with an OrderCreated outbox row
    python examples/orders_demo.py show        # the events the relay published, read back from Kafka

Uses the OUTBOX_DB_* and KAFKA_BOOTSTRAP_SERVERS variables (``scripts/local-stack env``).
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

from outbox_relay.config import load_database_settings
from outbox_relay.db import connector
from outbox_relay.kafka_tools import ensure_topics, read_topics
from outbox_relay.writer import add_event

TOPIC = "outbox.event.order"


def connect() -> Any:
    """A connection from the same OUTBOX_DB_* settings as the relay, in explicit transactions."""
    conn = connector(load_database_settings(os.environ))()
    conn.autocommit(False)
    return conn


def create_order(conn: Any, customer: str, total_cents: int) -> str:
    """The business change and the event row commit together, or neither does."""
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO orders (id, customer, total_cents, state) VALUES (%s, %s, %s, 'CREATED')",
            (order_id, customer, total_cents),
        )
    add_event(
        conn,
        "order",
        order_id,
        "OrderCreated",
        {"orderId": order_id, "customer": customer, "totalCents": total_cents},
    )
    conn.commit()
    return order_id


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "write"
    if command == "write":
        count = int(argv[2]) if len(argv) > 2 else 5
        conn = connect()
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS orders (id VARCHAR(64) PRIMARY KEY, customer VARCHAR(64),"
                " total_cents INT, state VARCHAR(16)) ENGINE=InnoDB"
            )
        for n in range(count):
            print("created", create_order(conn, f"customer-{n}", 1000 + n))
        conn.close()
        ensure_topics(os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(","), [TOPIC])
        return 0
    if command == "show":
        records = read_topics(os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(","), [TOPIC])
        for r in records:
            headers = {k: v.decode() for k, v in r.headers.items()}
            print(f"{r.topic}[{r.partition}]@{r.offset} key={r.key!r} headers={headers} value={r.value!r}")
        print(f"{len(records)} event(s) in {TOPIC}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
