"""Wiring: the adapters for one configuration, built once per process and reused while warm."""

from __future__ import annotations

import random
from typing import Any

import boto3
from aws_lambda_powertools.utilities import parameters

from .admin_mysql import OutboxAdmin
from .config import Config, RelaySettings
from .db import connector
from .deadletter_sqs import SqsDeadLetterSink
from .kafka_auth import auth_config
from .ports import CredentialsUnavailable, Metrics, SystemClock
from .publisher_kafka import KafkaPublisher
from .relay import Relay
from .sql import OutboxSql
from .store_mysql import MySQLOutboxStore


def _read_secret(arn: str) -> str:
    # Powertools caches the value for 5 minutes across warm invocations.
    try:
        value: Any = parameters.get_secret(arn, max_age=300)
    except Exception as exc:  # GetParameterError, botocore errors: a run result, not a crash
        detail = " ".join(str(exc).split())
        raise CredentialsUnavailable(f"cannot read secret {arn}: {detail}") from exc
    return value if isinstance(value, str) else bytes(value).decode()


class Runtime:
    """Store, publisher and dead-letter sink of one process (connections stay open)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        db = config.database
        connect = connector(db, _read_secret)
        delete_on_publish = config.retention.published_seconds == 0
        self.store = MySQLOutboxStore(
            connect, OutboxSql(db.table), db.lock_wait_timeout_seconds, delete_on_publish=delete_on_publish
        )
        # The finalize runs on its own connection, beside the next batch's read and send.
        self.finalize_store = MySQLOutboxStore(
            connect, OutboxSql(db.table), db.lock_wait_timeout_seconds, delete_on_publish=delete_on_publish
        )
        self.publisher = KafkaPublisher(
            config.kafka, extra_config=lambda: auth_config(config.kafka, _read_secret)
        )
        # AWS_ENDPOINT_URL (boto3's own setting) points this at moto locally.
        self.dead_letters = SqsDeadLetterSink(lambda: boto3.client("sqs"), config.dlq_queue_url)

    def relay(self, settings: RelaySettings, metrics: Metrics, owner: str) -> Relay:
        self.store.check()
        self.finalize_store.check()
        return Relay(
            self.store,
            self.publisher,
            self.dead_letters,
            metrics,
            SystemClock(),
            settings,
            owner,
            random.Random(),
            finalize_store=self.finalize_store,
        )

    def admin(self) -> OutboxAdmin:
        self.store.check()
        return OutboxAdmin(self.store, self.config.relay.topic_template)

    def close(self) -> None:
        self.publisher.close()
        self.store.close()
        self.finalize_store.close()


_current: Runtime | None = None


def runtime_for(config: Config) -> Runtime:
    """The cached runtime, rebuilt when the configuration changed."""
    global _current  # noqa: PLW0603 - one runtime per Lambda execution environment
    if _current is None or _current.config != config:
        if _current is not None:
            _current.close()
        _current = Runtime(config)
    return _current
