"""Configuration: read from the environment and validated here, and nowhere else.

Every variable is listed in README's configuration table.  Problems are collected and reported
together as one line, so a bad deployment says everything that is wrong at once.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .sql import valid_identifier

T = TypeVar("T")

TOPIC_FIELDS = frozenset({"aggregate_type", "event_type"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("OAUTHBEARER", "SCRAM-SHA-512")
COMPRESSION_TYPES = ("none", "gzip", "lz4", "zstd", "snappy")
DB_TLS_MODES = ("off", "required", "verify")
# Kafka's own topics: writing events there would corrupt the cluster's state.  Other names that
# start with "__" (Debezium's heartbeat topics, MSK's canary) are ordinary topics.
INTERNAL_TOPICS = frozenset(
    {"__consumer_offsets", "__transaction_state", "__cluster_metadata", "__share_group_state"}
)
# Kafka's topic name characters (messages.legal_topic checks whole names with the same class).
TOPIC_CHARS = "A-Za-z0-9._-"
_TOPIC_CHAR = re.compile(f"[{TOPIC_CHARS}]")


class ConfigError(ValueError):
    """The environment does not describe a runnable relay.  ``str()`` is one line."""


@dataclass(frozen=True)
class RelaySettings:
    """Knobs of the relay core.  Defaults are safe for a 1-minute schedule."""

    batch_size: int = 2000
    # Bodies (payload + headers) one pass may hold, whatever the rows: memory bounded by bytes.
    max_batch_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 10
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 900.0
    lease_margin_seconds: float = 10.0
    stop_margin_seconds: float = 1.0
    topic_template: str = "outbox.event.{aggregate_type}"
    max_message_bytes: int = 1_048_576
    require_json: bool = True
    max_shards_per_run: int = 0  # 0: lease every free shard at once
    # Keep polling for new rows this long after draining (0: stop when drained); sleeps
    # poll_interval_seconds between empty reads.  Bounded by the invocation's deadline.
    poll_window_seconds: float = 0.0
    poll_interval_seconds: float = 0.05
    max_events: int | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str | None
    secret_arn: str | None
    table: str = "outbox"
    connect_timeout_seconds: float = 5.0
    lock_wait_timeout_seconds: int = 5
    tls: str = "off"  # off | required (encrypted) | verify (encrypted, CA and host name checked)
    ssl_ca: str | None = None
    iam_auth: bool = False  # Aurora IAM authentication: a signed token per connection, no password
    region: str = ""  # where IAM tokens are signed for


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    client_id: str = "outbox-relay"
    compression_type: str = "none"
    linger_ms: int = 5
    batch_bytes: int = 262_144
    request_timeout_ms: int = 10_000
    delivery_timeout_ms: int = 30_000
    max_block_ms: int = 5_000
    max_request_bytes: int = 1_048_576
    sasl_secret_arn: str | None = None
    ssl_cafile: str | None = None
    region: str = ""


@dataclass(frozen=True)
class RetentionSettings:
    """How long finished rows stay in the outbox (the janitor deletes them in batches)."""

    published_seconds: int = 86_400  # 0: rows are deleted when published (no PUBLISHED state)
    dead_seconds: int = 30 * 86_400
    batch_size: int = 1000


@dataclass(frozen=True)
class Config:
    relay: RelaySettings
    database: DatabaseSettings
    kafka: KafkaSettings
    dlq_queue_url: str
    retention: RetentionSettings = RetentionSettings()


@dataclass(frozen=True)
class StoreConfig:
    """What a command that only uses the outbox database needs: no Kafka, no dead-letter queue."""

    relay: RelaySettings
    database: DatabaseSettings
    retention: RetentionSettings = RetentionSettings()


class _Reader:
    """Reads typed values from an environment mapping, collecting every problem."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        raw = self.env.get(name)
        value = raw.strip() if raw is not None else None
        if not value:
            if required:
                self.problems.append(f"{name} is required")
            return default
        return value

    def number(self, name: str, default: T, parse: Callable[[str], T], low: float, high: float) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = parse(raw)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            self.problems.append(f"{name}={raw!r} is not {kind}")
            return default
        if not low <= value <= high:  # type: ignore[operator]
            self.problems.append(f"{name}={raw!r} is out of range [{low:g}, {high:g}]")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={raw!r} is not a boolean (true/false)")
        return default

    def choice(self, name: str, default: str | None, choices: tuple[str, ...]) -> str | None:
        raw = self.text(name)
        if raw is None:
            return default
        if raw not in choices:
            self.problems.append(f"{name}={raw!r} is not one of {', '.join(choices)}")
            return default
        return raw


def check_topic_template(template: str) -> str | None:
    """Why ``template`` is not a usable topic template, or None when it is."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a valid template ({exc})"
    literal = ""
    for text, name, spec, conversion in fields:
        literal += text
        if name is None:
            continue
        if name not in TOPIC_FIELDS or spec or conversion:
            allowed = ", ".join("{" + f + "}" for f in sorted(TOPIC_FIELDS))
            return f"uses {{{name}}}; only {allowed} may appear"
    # The literal text is in every topic it makes: a character Kafka refuses there would
    # dead-letter every event routed through it while runs report success.
    bad = sorted({c for c in literal if not _TOPIC_CHAR.fullmatch(c)})
    if bad:
        return f"has {''.join(bad)!r} outside the fields; Kafka topic names allow only [A-Za-z0-9._-]"
    if len(literal) > 249:
        return f"is {len(literal)} characters without its fields; Kafka allows 249"
    if not any(name for _, name, _, _ in fields) and (literal in (".", "..") or literal in INTERNAL_TOPICS):
        return "is not a legal Kafka topic name"
    return None


def _database(r: _Reader) -> DatabaseSettings:
    table = r.text("OUTBOX_TABLE", "outbox") or "outbox"
    if not valid_identifier(table):
        r.problems.append(
            f"OUTBOX_TABLE={table!r} is not a plain table name (letters, digits, _; at most 48)"
        )
    password = r.text("OUTBOX_DB_PASSWORD")
    secret_arn = r.text("OUTBOX_DB_SECRET_ARN")
    iam_auth = r.flag("OUTBOX_DB_IAM_AUTH", False)
    tls = r.choice("OUTBOX_DB_TLS", "off", DB_TLS_MODES) or "off"
    region = r.text("AWS_REGION") or r.text("AWS_DEFAULT_REGION") or ""
    if iam_auth:
        _check_iam_auth(r, password, secret_arn, tls, region)
    elif password is None and secret_arn is None:
        r.problems.append(
            "one of OUTBOX_DB_PASSWORD (local) or OUTBOX_DB_SECRET_ARN (deployed) is required,"
            " or OUTBOX_DB_IAM_AUTH=true"
        )
    ssl_ca = r.text("OUTBOX_DB_SSL_CA")
    if tls == "verify" and ssl_ca is None:
        r.problems.append(
            "OUTBOX_DB_SSL_CA (a CA bundle, e.g. RDS global-bundle.pem) is required with OUTBOX_DB_TLS=verify"
        )
    if ssl_ca is not None and not os.path.isfile(ssl_ca):
        r.problems.append(f"OUTBOX_DB_SSL_CA={ssl_ca!r} is not a file")
    return DatabaseSettings(
        host=r.text("OUTBOX_DB_HOST", required=True) or "",
        port=r.number("OUTBOX_DB_PORT", 3306, int, 1, 65535),
        name=r.text("OUTBOX_DB_NAME", required=True) or "",
        user=r.text("OUTBOX_DB_USER", required=True) or "",
        password=password,
        secret_arn=secret_arn,
        table=table,
        lock_wait_timeout_seconds=r.number("OUTBOX_DB_LOCK_WAIT_TIMEOUT_SECONDS", 5, int, 1, 120),
        tls=tls,
        ssl_ca=ssl_ca,
        iam_auth=iam_auth,
        region=region,
    )


def _check_iam_auth(r: _Reader, password: str | None, secret_arn: str | None, tls: str, region: str) -> None:
    """Aurora IAM authentication: the token is the only credential, sent over TLS only."""
    for name, value in (("OUTBOX_DB_PASSWORD", password), ("OUTBOX_DB_SECRET_ARN", secret_arn)):
        if value is not None:
            r.problems.append(f"{name} and OUTBOX_DB_IAM_AUTH=true are mutually exclusive")
    if tls != "verify":
        # The token is a 15-minute login sent in clear text inside TLS: only to a verified server.
        r.problems.append(
            "OUTBOX_DB_IAM_AUTH=true needs OUTBOX_DB_TLS=verify (the token is a login: send it to a"
            " verified server only)"
        )
    if not region:
        r.problems.append("AWS_REGION is required with OUTBOX_DB_IAM_AUTH=true (tokens are per region)")


def _kafka(r: _Reader, max_message_bytes: int) -> KafkaSettings:
    protocol = r.choice("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", SECURITY_PROTOCOLS) or "PLAINTEXT"
    mechanism = r.choice("KAFKA_SASL_MECHANISM", None, SASL_MECHANISMS)
    if protocol == "SASL_SSL" and mechanism is None:
        r.problems.append("KAFKA_SASL_MECHANISM is required when KAFKA_SECURITY_PROTOCOL=SASL_SSL")
    if protocol != "SASL_SSL" and mechanism is not None:
        r.problems.append(f"KAFKA_SASL_MECHANISM={mechanism!r} needs KAFKA_SECURITY_PROTOCOL=SASL_SSL")
    sasl_secret = r.text("KAFKA_SASL_SECRET_ARN")
    if mechanism == "SCRAM-SHA-512" and sasl_secret is None:
        r.problems.append(
            "KAFKA_SASL_SECRET_ARN (the MSK SCRAM secret) is required with KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
        )
    region = r.text("AWS_REGION") or r.text("AWS_DEFAULT_REGION") or ""
    if mechanism == "OAUTHBEARER" and not region:
        r.problems.append("AWS_REGION is required with KAFKA_SASL_MECHANISM=OAUTHBEARER (MSK IAM)")
    cafile = r.text("KAFKA_SSL_CAFILE")
    if cafile is not None and not os.path.isfile(cafile):
        r.problems.append(f"KAFKA_SSL_CAFILE={cafile!r} is not a file")
    servers = tuple(
        s.strip() for s in (r.text("KAFKA_BOOTSTRAP_SERVERS", required=True) or "").split(",") if s.strip()
    )
    if not servers and r.text("KAFKA_BOOTSTRAP_SERVERS"):
        r.problems.append("KAFKA_BOOTSTRAP_SERVERS lists no host:port")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            r.problems.append(f"KAFKA_BOOTSTRAP_SERVERS entry {server!r} is not host:port")
    request_timeout_ms = r.number("KAFKA_REQUEST_TIMEOUT_MS", 10_000, int, 100, 300_000)
    linger_ms = r.number("KAFKA_LINGER_MS", 5, int, 0, 1000)
    delivery_timeout_ms = r.number("KAFKA_DELIVERY_TIMEOUT_MS", 30_000, int, 100, 900_000)
    if delivery_timeout_ms < request_timeout_ms + linger_ms:
        r.problems.append(
            "KAFKA_DELIVERY_TIMEOUT_MS must be at least KAFKA_REQUEST_TIMEOUT_MS + KAFKA_LINGER_MS"
        )
    return KafkaSettings(
        bootstrap_servers=servers,
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        client_id=r.text("KAFKA_CLIENT_ID", "outbox-relay") or "outbox-relay",
        compression_type=r.choice("KAFKA_COMPRESSION_TYPE", "none", COMPRESSION_TYPES) or "none",
        linger_ms=linger_ms,
        batch_bytes=r.number("KAFKA_BATCH_BYTES", 262_144, int, 1024, 16 * 1024 * 1024),
        request_timeout_ms=request_timeout_ms,
        delivery_timeout_ms=delivery_timeout_ms,
        max_block_ms=r.number("KAFKA_MAX_BLOCK_MS", 5_000, int, 100, 120_000),
        # Room for the key and headers on top of the largest payload the relay lets through.
        max_request_bytes=max_message_bytes + 64 * 1024,
        sasl_secret_arn=sasl_secret,
        ssl_cafile=cafile,
        region=region,
    )


def _relay(r: _Reader) -> RelaySettings:
    template = r.text("OUTBOX_TOPIC_TEMPLATE", RelaySettings.topic_template) or RelaySettings.topic_template
    problem = check_topic_template(template)
    if problem:
        r.problems.append(f"OUTBOX_TOPIC_TEMPLATE={template!r} {problem}")
    base = r.number("OUTBOX_BACKOFF_BASE_SECONDS", 1.0, float, 0.001, 3600)
    cap = r.number("OUTBOX_BACKOFF_MAX_SECONDS", 900.0, float, 0.001, 86_400)
    if cap < base:
        r.problems.append("OUTBOX_BACKOFF_MAX_SECONDS must be at least OUTBOX_BACKOFF_BASE_SECONDS")
    return RelaySettings(
        batch_size=r.number("OUTBOX_BATCH_SIZE", 2000, int, 1, 10_000),
        max_batch_bytes=r.number(
            "OUTBOX_MAX_BATCH_BYTES", 8 * 1024 * 1024, int, 64 * 1024, 256 * 1024 * 1024
        ),
        max_attempts=r.number("OUTBOX_MAX_ATTEMPTS", 10, int, 1, 1000),
        backoff_base_seconds=base,
        backoff_max_seconds=cap,
        lease_margin_seconds=r.number("OUTBOX_LEASE_MARGIN_SECONDS", 10.0, float, 1, 3600),
        stop_margin_seconds=r.number("OUTBOX_STOP_MARGIN_SECONDS", 1.0, float, 0.1, 60),
        topic_template=template,
        max_message_bytes=r.number("OUTBOX_MAX_MESSAGE_BYTES", 1_048_576, int, 1024, 100 * 1024 * 1024),
        require_json=r.flag("OUTBOX_REQUIRE_JSON", True),
        max_shards_per_run=r.number("OUTBOX_MAX_SHARDS_PER_RUN", 0, int, 0, 1024),
        poll_window_seconds=r.number("OUTBOX_POLL_WINDOW_SECONDS", 0.0, float, 0, 900),
        poll_interval_seconds=r.number("OUTBOX_POLL_INTERVAL_MS", 50, int, 1, 10_000) / 1000.0,
    )


def _retention(r: _Reader) -> RetentionSettings:
    return RetentionSettings(
        published_seconds=r.number("OUTBOX_RETENTION_SECONDS", 86_400, int, 0, 10 * 365 * 86_400),
        dead_seconds=r.number("OUTBOX_DEAD_RETENTION_SECONDS", 30 * 86_400, int, 60, 10 * 365 * 86_400),
        batch_size=r.number("OUTBOX_JANITOR_BATCH_SIZE", 1000, int, 1, 100_000),
    )


def load_config(env: Mapping[str, str]) -> Config:
    """Build and validate the configuration; raises :class:`ConfigError` listing every problem."""
    r = _Reader(env)
    database = _database(r)
    relay = _relay(r)
    kafka = _kafka(r, relay.max_message_bytes)
    dlq = r.text("DLQ_QUEUE_URL", required=True) or ""
    retention = _retention(r)
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return Config(relay=relay, database=database, kafka=kafka, dlq_queue_url=dlq, retention=retention)


def load_store_config(env: Mapping[str, str]) -> StoreConfig:
    """The database, relay and retention settings, validated as :func:`load_config` validates
    them; the Kafka and dead-letter queue settings are neither required nor read (the operator
    commands that only use the database: status, dry-run, janitor)."""
    r = _Reader(env)
    database = _database(r)
    relay = _relay(r)
    retention = _retention(r)
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return StoreConfig(relay=relay, database=database, retention=retention)


def load_dlq_queue_url(env: Mapping[str, str]) -> str:
    """``DLQ_QUEUE_URL`` alone, for a command that reads the dead-letter queue."""
    r = _Reader(env)
    url = r.text("DLQ_QUEUE_URL", required=True) or ""
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return url


def load_database_settings(env: Mapping[str, str]) -> DatabaseSettings:
    """Only the database part (what `outbox-relay migrate` needs)."""
    r = _Reader(env)
    database = _database(r)
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return database


def load_kafka_settings(env: Mapping[str, str], bootstrap: Sequence[str] | None = None) -> KafkaSettings:
    """Only the Kafka part (what `outbox-relay topics` needs): the same security settings the
    publisher uses.  ``bootstrap`` (``--bootstrap``) replaces KAFKA_BOOTSTRAP_SERVERS."""
    if bootstrap:
        env = {**env, "KAFKA_BOOTSTRAP_SERVERS": ",".join(bootstrap)}
    r = _Reader(env)
    kafka = _kafka(r, RelaySettings.max_message_bytes)
    if r.problems:
        raise ConfigError("invalid configuration: " + "; ".join(r.problems))
    return kafka
