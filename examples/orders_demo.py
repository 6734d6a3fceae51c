"""The seed's `createOrder` scenario: the order and its event are written in ONE transaction.

    python examples/orders_demo.py write 5     # 5 orders, each with an OrderCreated outbox row
    python examples/orders_demo.py show        # the events the relay published, read back from Kafka

Uses the OUTBOX_DB_* and KAFKA_BOOTSTRAP_SERVERS variables (``scripts/local-stack env``).
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import pymysql

from outbox_relay.kafka_tools import ensure_topics, read_topics

TOPIC = "outbox.event.order"


def connect() -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=os.environ["OUTBOX_DB_HOST"],
        port=int(os.environ.get("OUTBOX_DB_PORT", "3306")),
        user=os.environ["OUTBOX_DB_USER"],
        password=os.environ["OUTBOX_DB_PASSWORD"],
        database=os.environ["OUTBOX_DB_NAME"],
        autocommit=False,
    )


def create_order(conn: pymysql.connections.Connection, customer: str, total_cents: int) -> str:  # type: ignore[type-arg]
    """The business change and the event row commit together, or neither does."""
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"orderId": order_id, "customer": customer, "totalCents": total_cents})
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO orders (id, customer, total_cents, state) VALUES (%s, %s, %s, 'CREATED')",
            (order_id, customer, total_cents),
        )
        cur.execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)"
            " VALUES ('order', %s, 'OrderCreated', %s)",
            (order_id, payload),
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
