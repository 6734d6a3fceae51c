"""Wiring: the adapters for one configuration, built once per process and reused while warm."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

from aws_lambda_powertools.utilities.parameters import SecretsProvider

from . import aws_clients
from .admin_mysql import OutboxAdmin
from .config import Config, RelaySettings, StoreConfig
from .db import SecretReader, connector
from .dead_letters import DeadLetterDispatch, within
from .deadletter_sqs import SqsDeadLetterSink
from .kafka_auth import auth_config
from .messages import encode
from .model import OutboxRecord
from .ports import CredentialsUnavailable, Metrics, SystemClock
from .preview import preview
from .publisher_kafka import KafkaPublisher
from .relay import Relay
from .sql import OutboxSql
from .store_mysql import MySQLOutboxStore


def read_secret(arn: str, fresh: bool = False) -> str:
    # Powertools caches the value for 5 minutes across warm invocations.  ``fresh`` bypasses the
    # cache and refreshes it: the database refused the cached credentials (a rotation).
    # Every failure (missing, denied, throttled, unreachable) ends this run with one line; the
    # next scheduled run reads it again.
    try:
        value: Any = _secrets_provider().get(arn, max_age=300, force_fetch=fresh)
        return value if isinstance(value, str) else bytes(value).decode()
    except Exception as exc:  # GetParameterError, botocore errors, a SecretBinary that is not UTF-8
        detail = " ".join(str(exc).split())
        raise CredentialsUnavailable(f"cannot read secret {arn}: {detail}") from exc


def bounded(seconds: Callable[[], float]) -> SecretReader:
    """:func:`read_secret`, waited for ``seconds()`` at most (the time the run has left): the
    client's own bounds (aws_clients.SECRETS_MANAGER, ~7 s) do not know the run's deadline.  A
    read cut off goes on in its thread and fills Powertools' cache if it succeeds."""

    def read(arn: str, fresh: bool = False) -> str:
        limit = seconds()
        try:
            return within(limit, lambda: read_secret(arn, fresh))
        except TimeoutError:
            raise CredentialsUnavailable(
                f"cannot read secret {arn}: no answer within {limit:.1f} s (the run's deadline)"
            ) from None

    return read


# Powertools' provider on the bounded Secrets Manager client: built on the first secret read (a
# run with OUTBOX_DB_PASSWORD never pays for it), kept while warm (it caches the values).
_secrets: SecretsProvider | None = None


def _secrets_provider() -> SecretsProvider:
    global _secrets  # noqa: PLW0603 - one provider per Lambda execution environment, like the runtime
    if _secrets is None:
        _secrets = aws_clients.secrets_provider()
    return _secrets


class Runtime:
    """Store, publisher and dead-letter sink of one process (connections stay open)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        db = config.database

        # Connections opened in an invocation, and the secret reads they make, are bounded by its
        # deadline (see bound()); late bound: the store is made below.
        def time_left() -> float:
            return self.store.statement_timeout()

        secrets = bounded(time_left)
        connect = connector(db, secrets, timeout=time_left)
        delete_on_publish = config.retention.published_seconds == 0
        self.store = MySQLOutboxStore(
            connect, OutboxSql(db.table), db.lock_wait_timeout_seconds, delete_on_publish=delete_on_publish
        )
        # The finalize runs on its own connection, beside the next batch's read and send.
        self.finalize_store = MySQLOutboxStore(
            connect, OutboxSql(db.table), db.lock_wait_timeout_seconds, delete_on_publish=delete_on_publish
        )
        self.publisher = KafkaPublisher(
            config.kafka, extra_config=lambda: auth_config(config.kafka, lambda arn: secrets(arn, False))
        )
        # The client (bounded: aws_clients.SQS) is built on the first dead letter.  The dispatch
        # lives while warm, so a queue outage's pause carries over to the next invocations.
        self.dead_letters = SqsDeadLetterSink(aws_clients.sqs_client, config.dlq_queue_url)
        self.dispatch = DeadLetterDispatch(self.dead_letters)

    def bound(self, deadline: float) -> None:
        """No database statement of this invocation blocks past ``deadline`` (monotonic) by more
        than half a second, and none is retried past it."""
        self.store.deadline = deadline
        self.finalize_store.deadline = deadline

    def relay(self, settings: RelaySettings, metrics: Metrics, owner: str) -> Relay:
        self.store.check()
        self.finalize_store.check()
        return Relay(
            self.store,
            self.publisher,
            self.dispatch,
            metrics,
            SystemClock(),
            settings,
            owner,
            random.Random(),
            finalize_store=self.finalize_store,
        )

    def admin(self) -> OutboxAdmin:
        self.store.check()
        return OutboxAdmin(self.store, self.config.relay.topic_template, self.config.retention)

    def close(self) -> None:
        self.publisher.close()
        self.store.close()
        self.finalize_store.close()


class StoreRuntime:
    """The outbox store alone, for the operator commands that use only the database (status,
    dry-run, janitor): no Kafka producer, no dead-letter queue, so no settings for them."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        db = config.database

        def time_left() -> float:
            return self.store.statement_timeout()

        connect = connector(db, bounded(time_left), timeout=time_left)
        self.store = MySQLOutboxStore(
            connect,
            OutboxSql(db.table),
            db.lock_wait_timeout_seconds,
            delete_on_publish=config.retention.published_seconds == 0,
        )

    def bound(self, deadline: float) -> None:
        """As :meth:`Runtime.bound`: connects, statements and retries end by ``deadline`` (+0.5 s)."""
        self.store.deadline = deadline

    def admin(self) -> OutboxAdmin:
        return OutboxAdmin(self.store, self.config.relay.topic_template, self.config.retention)

    def preview(self, limit: int) -> list[tuple[OutboxRecord, str]]:
        """:meth:`Relay.preview`: the same rows and verdicts, without a publisher."""
        settings = self.config.relay
        return preview(self.store, partial(encode, settings=settings), limit, settings)

    def close(self) -> None:
        self.store.close()


_current: Runtime | None = None


def runtime_for(config: Config) -> Runtime:
    """The cached runtime, rebuilt when the configuration changed."""
    global _current, _secrets  # noqa: PLW0603 - one runtime per Lambda execution environment
    if _current is None or _current.config != config:
        if _current is not None:
            _current.close()
        _secrets = None  # a new configuration reads its secrets afresh, on a client built now
        _current = Runtime(config)
    return _current
