"""Configuration is read and validated in one place; invocation overrides are strict."""

from __future__ import annotations

import re

import pytest

from outbox_relay.config import (
    ConfigError,
    RelaySettings,
    check_topic_template,
    load_config,
    load_database_settings,
    load_dlq_queue_url,
    load_store_config,
)
from outbox_relay.invocation import Invocation, InvocationError, parse_invocation, with_overrides

MINIMAL = {
    "OUTBOX_DB_HOST": "db.local",
    "OUTBOX_DB_NAME": "shop",
    "OUTBOX_DB_USER": "relay",
    "OUTBOX_DB_PASSWORD": "pw",
    "KAFKA_BOOTSTRAP_SERVERS": "b-1:9092, b-2:9092",
    "DLQ_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/dlq",
}


def test_minimal_environment_gets_safe_defaults() -> None:
    config = load_config(MINIMAL)
    assert config.database.port == 3306 and config.database.table == "outbox"
    assert config.kafka.bootstrap_servers == ("b-1:9092", "b-2:9092")
    assert config.kafka.security_protocol == "PLAINTEXT" and config.kafka.sasl_mechanism is None
    assert config.relay == RelaySettings()
    assert config.relay.topic_template == "outbox.event.{aggregate_type}"


def test_tuning_knobs_are_read() -> None:
    config = load_config(
        {
            **MINIMAL,
            "OUTBOX_BATCH_SIZE": "250",
            "OUTBOX_MAX_ATTEMPTS": "3",
            "OUTBOX_BACKOFF_BASE_SECONDS": "0.5",
            "OUTBOX_REQUIRE_JSON": "false",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "OUTBOX_TABLE": "events_outbox",
            "OUTBOX_MAX_MESSAGE_BYTES": "2048",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert (config.relay.batch_size, config.relay.max_attempts) == (250, 3)
    assert config.relay.backoff_base_seconds == 0.5 and config.relay.require_json is False
    assert config.kafka.sasl_mechanism == "OAUTHBEARER" and config.database.table == "events_outbox"
    assert config.kafka.max_request_bytes == 2048 + 64 * 1024
    assert config.kafka.region == "eu-west-1"


def test_msk_auth_needs_its_region_or_secret() -> None:
    iam = {**MINIMAL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER"}
    with pytest.raises(ConfigError, match="AWS_REGION is required with KAFKA_SASL_MECHANISM=OAUTHBEARER"):
        load_config(iam)
    scram = {**iam, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    with pytest.raises(ConfigError, match=r"KAFKA_SASL_SECRET_ARN .* is required"):
        load_config(scram)


def test_database_tls_verify_needs_a_ca_bundle_that_exists() -> None:
    with pytest.raises(ConfigError, match=r"OUTBOX_DB_SSL_CA .* is required with OUTBOX_DB_TLS=verify"):
        load_config({**MINIMAL, "OUTBOX_DB_TLS": "verify"})
    with pytest.raises(ConfigError, match=re.escape("OUTBOX_DB_SSL_CA='/nope.pem' is not a file")):
        load_config({**MINIMAL, "OUTBOX_DB_TLS": "verify", "OUTBOX_DB_SSL_CA": "/nope.pem"})


def test_secret_arn_replaces_the_password() -> None:
    env = {k: v for k, v in MINIMAL.items() if k != "OUTBOX_DB_PASSWORD"}
    with pytest.raises(ConfigError, match="one of OUTBOX_DB_PASSWORD"):
        load_config(env)
    arn = "arn:aws:secretsmanager:us-east-1:1:secret:db"
    assert load_config({**env, "OUTBOX_DB_SECRET_ARN": arn}).database.secret_arn == arn


def test_missing_variables_are_all_named_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({})
    text = str(err.value)
    assert "\n" not in text
    for name in (
        "OUTBOX_DB_HOST",
        "OUTBOX_DB_NAME",
        "OUTBOX_DB_USER",
        "KAFKA_BOOTSTRAP_SERVERS",
        "DLQ_QUEUE_URL",
    ):
        assert f"{name} is required" in text


def test_database_settings_alone_need_only_database_variables() -> None:
    db = {k: v for k, v in MINIMAL.items() if k.startswith("OUTBOX_DB")}
    assert load_database_settings(db).host == "db.local"


def test_store_config_needs_no_kafka_and_no_dead_letter_queue() -> None:
    env = {k: v for k, v in MINIMAL.items() if k.startswith("OUTBOX_DB")}
    env |= {"OUTBOX_TOPIC_TEMPLATE": "shop.{event_type}", "OUTBOX_RETENTION_SECONDS": "60"}
    config = load_store_config(env)
    assert config.database == load_config(MINIMAL).database
    assert config.relay.topic_template == "shop.{event_type}" and config.retention.published_seconds == 60
    # The full configuration still needs them, for the Lambda.
    with pytest.raises(ConfigError, match=r"KAFKA_BOOTSTRAP_SERVERS is required.*DLQ_QUEUE_URL is required"):
        load_config(env)


def test_store_config_validates_what_it_reads_as_the_full_configuration_does() -> None:
    with pytest.raises(ConfigError) as err:
        load_store_config(
            {
                "OUTBOX_DB_PORT": "0",
                "OUTBOX_BATCH_SIZE": "nan",
                "OUTBOX_JANITOR_BATCH_SIZE": "-1",
                "KAFKA_LINGER_MS": "never read",
            }
        )
    text = str(err.value)
    assert "\n" not in text and "KAFKA" not in text and "DLQ_QUEUE_URL" not in text
    for problem in (
        "OUTBOX_DB_HOST is required",
        "OUTBOX_DB_PORT='0' is out of range",
        "OUTBOX_BATCH_SIZE='nan' is not an integer",
        "OUTBOX_JANITOR_BATCH_SIZE='-1' is out of range",
    ):
        assert problem in text


def test_the_dead_letter_queue_url_alone() -> None:
    assert load_dlq_queue_url({"DLQ_QUEUE_URL": " https://sqs/1/dlq "}) == "https://sqs/1/dlq"
    with pytest.raises(ConfigError, match=r"^invalid configuration: DLQ_QUEUE_URL is required$"):
        load_dlq_queue_url({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("outbox.event.{aggregate_type}", None),
        ("{aggregate_type}.{event_type}", None),
        ("static-topic", None),
        ("{aggregate_id}", "uses {aggregate_id}; only {aggregate_type}, {event_type} may appear"),
        ("{aggregate_type!r}", "uses {aggregate_type}; only {aggregate_type}, {event_type} may appear"),
        ("{aggregate_type", "is not a valid template (expected '}' before end of string)"),
    ],
)
def test_topic_template_placeholders(template: str, problem: str | None) -> None:
    assert check_topic_template(template) == problem


def test_delivery_timeout_must_cover_request_timeout_and_linger() -> None:
    with pytest.raises(ConfigError, match="KAFKA_DELIVERY_TIMEOUT_MS must be at least"):
        load_config({**MINIMAL, "KAFKA_DELIVERY_TIMEOUT_MS": "1000", "KAFKA_REQUEST_TIMEOUT_MS": "5000"})


def test_scheduled_events_carry_no_overrides() -> None:
    assert (
        parse_invocation({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}})
        == Invocation()
    )
    assert parse_invocation({"source": "aws.scheduler"}) == Invocation()
    assert parse_invocation(None) == Invocation()
    assert parse_invocation({}) == Invocation()


def test_the_janitor_schedule_names_its_action() -> None:
    assert parse_invocation({"source": "aws.scheduler", "action": "janitor"}).action == "janitor"


def test_manual_overrides_apply_without_touching_the_rest() -> None:
    invocation = parse_invocation(
        {"batch_size": 50, "max_events": 7, "dry_run": True, "poll_window_seconds": 2.5}
    )
    settings = with_overrides(RelaySettings(), invocation.overrides)
    assert (settings.batch_size, settings.max_events, settings.dry_run) == (50, 7, True)
    assert settings.poll_window_seconds == 2.5
    assert settings.max_attempts == RelaySettings().max_attempts


def test_operator_actions() -> None:
    assert parse_invocation({"action": "status"}) == Invocation(action="status")
    assert parse_invocation({"action": "redrive", "ids": [3, 9]}) == Invocation(action="redrive", ids=(3, 9))
    with pytest.raises(InvocationError, match="redrive needs ids"):
        parse_invocation({"action": "redrive", "ids": []})
    with pytest.raises(InvocationError, match="unknown field 'batch_size' "):
        parse_invocation({"action": "status", "batch_size": 5})
    with pytest.raises(InvocationError, match="action must be one of relay, janitor, status, redrive"):
        parse_invocation({"action": "drop"})


def test_invalid_override_is_rejected_whole() -> None:
    with pytest.raises(InvocationError, match="batch_size must be an integer"):
        parse_invocation({"max_events": 5, "batch_size": 2.5})


def test_retention_settings() -> None:
    config = load_config({**MINIMAL, "OUTBOX_RETENTION_SECONDS": "0", "OUTBOX_JANITOR_BATCH_SIZE": "500"})
    assert config.retention.published_seconds == 0 and config.retention.batch_size == 500
    assert config.retention.dead_seconds == 30 * 86_400
