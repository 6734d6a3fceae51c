"""Operator and development helpers around Kafka: create topics, read topics back.

Not used by the relay itself (on MSK, topics are created by your infrastructure code).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def ensure_topics(
    bootstrap: Sequence[str],
    topics: Iterable[str],
    partitions: int = 3,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = KafkaAdminClient(bootstrap_servers=list(bootstrap), client_id="outbox-relay-admin")
    try:
        existing = set(admin.list_topics())
        missing = sorted(set(topics) - existing)
        if missing:
            spec = {
                t: {"num_partitions": partitions, "replication_factor": 1, "configs": dict(configs or {})}
                for t in missing
            }
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):  # created concurrently
                admin.create_topics(spec, wait_for_metadata=True)
        return missing
    finally:
        admin.close()


def read_topics(
    bootstrap: Sequence[str], topics: Iterable[str], timeout_seconds: float = 30.0
) -> list[ConsumedRecord]:
    """Everything currently in ``topics``, from the beginning to the end offsets seen at the start,
    in offset order per partition.  No consumer group (nothing committed)."""
    consumer = KafkaConsumer(
        bootstrap_servers=list(bootstrap), enable_auto_commit=False, client_id="outbox-relay-reader"
    )
    try:
        partitions = []
        for topic in topics:
            ids = consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        out: list[ConsumedRecord] = []
        deadline = time.monotonic() + timeout_seconds
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading back timed out; {len(remaining)} partitions not at their end")
            for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
                for r in records:
                    if r.offset < end[tp]:
                        out.append(
                            ConsumedRecord(
                                r.topic, r.partition, r.offset, r.key, r.value, dict(r.headers or [])
                            )
                        )
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
        out.sort(key=lambda r: (r.topic, r.partition, r.offset))
        return out
    finally:
        consumer.close()
