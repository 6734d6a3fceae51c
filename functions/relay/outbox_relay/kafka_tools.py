"""Operator and development helpers around Kafka: create topics, read topics back.

Not used by the relay itself (on MSK, topics are created by your infrastructure code).  The
clients take ``client``: the connection settings :func:`client_settings` builds from the
relay's own Kafka configuration (security protocol, MSK IAM, SCRAM, TLS), as the publisher does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors

from .config import KafkaSettings
from .kafka_auth import auth_config

# Per topic, when no replication factor is given: MSK's and Kafka's usual 3, or every broker of
# a smaller cluster (a factor above the broker count is refused by the broker).
DEFAULT_REPLICATION = 3


class TopicsRefused(Exception):
    """Refused before anything was created; ``str()`` is one line."""


class TopicsMissing(Exception):
    """The topics named do not exist."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(", ".join(names))
        self.names = list(names)


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def client_settings(settings: KafkaSettings, read_secret: Callable[[str], str]) -> dict[str, Any]:
    """kafka-python connection settings from the relay's configuration (kafka_auth.auth_config,
    the code the publisher uses), bootstrap servers included."""
    return {
        "bootstrap_servers": list(settings.bootstrap_servers),
        "security_protocol": settings.security_protocol,
        **auth_config(settings, read_secret),
    }


def _timeouts(timeout_seconds: float) -> dict[str, int]:
    """An unreachable cluster fails the bootstrap within the timeout, and no request waits much
    longer (the consumer needs 0.5 s < request timeout < its 540 s idle limit)."""
    ms = max(1, int(timeout_seconds * 1000))
    return {"bootstrap_timeout_ms": ms, "request_timeout_ms": min(max(ms, 1000), 300_000)}


def ensure_topics(
    bootstrap: Sequence[str],
    topics: Iterable[str],
    partitions: int = 3,
    configs: Mapping[str, str] | None = None,
    *,
    replication_factor: int | None = None,
    client: Mapping[str, Any] | None = None,
    timeout_seconds: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.  ``replication_factor``
    defaults to min(3, the cluster's brokers); a larger one than the brokers is refused."""
    settings = {"bootstrap_servers": list(bootstrap), **(client or {})}
    admin = KafkaAdminClient(client_id="outbox-relay-admin", **settings, **_timeouts(timeout_seconds))
    try:
        brokers = [b for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")]
        if not brokers:  # a cluster starting up: worth another try, not a refusal
            raise kafka_errors.BrokerNotAvailableError("no broker of the cluster is up (all fenced)")
        factor = replication_factor or min(DEFAULT_REPLICATION, len(brokers))
        if factor > len(brokers):
            raise TopicsRefused(
                f"replication factor {factor} needs {factor} brokers; the cluster has {len(brokers)}"
                " (nothing was created)"
            )
        existing = set(admin.list_topics())
        missing = sorted(set(topics) - existing)
        if missing:
            each = {
                "num_partitions": partitions,
                "replication_factor": factor,
                "configs": {**(configs or {})},
            }
            spec = {t: each for t in missing}
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):  # created concurrently
                admin.create_topics(spec, wait_for_metadata=True)
        return missing
    finally:
        admin.close()


def read_topics(
    bootstrap: Sequence[str],
    topics: Iterable[str],
    timeout_seconds: float = 30.0,
    *,
    client: Mapping[str, Any] | None = None,
    missing_ok: bool = True,
) -> list[ConsumedRecord]:
    """Everything currently in ``topics``, from the beginning to the end offsets seen at the start,
    in offset order per partition.  No consumer group (nothing committed).  A topic that does not
    exist reads as empty, or raises :class:`TopicsMissing` (``missing_ok=False``)."""
    consumer = KafkaConsumer(
        enable_auto_commit=False,
        client_id="outbox-relay-reader",
        allow_auto_create_topics=False,  # reading a name must never create it
        **{"bootstrap_servers": list(bootstrap), **(client or {})},
        **_timeouts(timeout_seconds),
    )
    try:
        partitions = []
        missing = []
        for topic in topics:
            ids = consumer.partitions_for_topic(topic) or set()
            if not ids:
                missing.append(topic)
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        if missing and not missing_ok:
            raise TopicsMissing(missing)
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
