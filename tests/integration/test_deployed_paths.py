"""What a deployment uses that local runs do not: the DB secret from Secrets Manager, TLS to the
database, and the EMF metrics CloudWatch alarms read."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest

from outbox_relay import handler
from outbox_relay.config import load_config
from outbox_relay.db import connector
from tests import support
from tests.conftest import make_topics


def _secret(value: dict[str, str]) -> str:
    sm = boto3.client("secretsmanager", endpoint_url=support.MOTO)
    return sm.create_secret(Name=f"db-{uuid.uuid4().hex[:8]}", SecretString=json.dumps(value))["ARN"]


def test_handler_reads_the_database_password_from_secrets_manager(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    database.insert(support.backlog(20, 4))
    make_topics(topics, "order")
    arn = _secret({"username": support.DB_USER, "password": support.DB_PASSWORD})

    result = invoke(OUTBOX_DB_PASSWORD="", OUTBOX_DB_SECRET_ARN=arn)

    assert result["ok"] and result["published"] == 20, result


def test_a_wrong_secret_is_one_clear_error_and_no_traceback(database: support.Database, invoke: Any) -> None:
    arn = _secret({"username": support.DB_USER, "password": "wrong"})
    result = invoke(OUTBOX_DB_PASSWORD="", OUTBOX_DB_SECRET_ARN=arn)
    assert result["ok"] is False and result["stopped_by"] == "database_unavailable"
    assert result["error"].startswith("database error: acquire shards: (1045) Access denied")


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        (None, "cannot read secret db-missing-"),  # not there (or not allowed): GetSecretValue fails
        ({"username": support.DB_USER}, "has no string 'password' field"),
    ],
)
def test_a_database_secret_that_cannot_be_used_is_one_line_for_runs_and_operator_actions(
    database: support.Database, invoke: Any, secret: dict[str, str] | None, error: str
) -> None:
    database.insert(support.backlog(3, 1))
    arn = _secret(secret) if secret is not None else f"db-missing-{uuid.uuid4().hex[:8]}"

    run = invoke(OUTBOX_DB_PASSWORD="", OUTBOX_DB_SECRET_ARN=arn)
    status = invoke({"action": "status"}, OUTBOX_DB_PASSWORD="", OUTBOX_DB_SECRET_ARN=arn)

    assert run["ok"] is False and run["stopped_by"] == "database_unavailable", run
    assert error in run["error"] and "\n" not in run["error"]
    assert status == {"ok": False, "error": status["error"]} and error in status["error"], status
    assert database.status_counts() == {"PENDING": 3}


def test_a_scram_secret_that_cannot_be_read_stops_the_run_as_kafka_unavailable(
    database: support.Database, topics: support.Topics, invoke: Any
) -> None:
    database.insert(support.backlog(3, 1))
    make_topics(topics, "order")
    missing = f"AmazonMSK_missing-{uuid.uuid4().hex[:8]}"

    run = invoke(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_SECRET_ARN=missing,
    )

    assert run["ok"] is False and run["stopped_by"] == "kafka_unavailable", run
    assert f"cannot read secret {missing}" in run["error"], run
    rows = database.rows()
    assert all(r["status"] == "PENDING" and r["attempts"] == 0 for r in rows), "an outage is no attempt"


@pytest.mark.parametrize("mode", ["required", "verify"])
def test_tls_to_the_database(database: support.Database, relay_env: dict[str, str], mode: str) -> None:
    env = {**relay_env, "OUTBOX_DB_TLS": mode, "OUTBOX_DB_SSL_CA": support.DB_CA if mode == "verify" else ""}
    conn = connector(load_config(env).database)()
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        (_, cipher) = cur.fetchone() or ("", "")
    conn.close()
    assert cipher, "the session is encrypted"


def test_tls_verify_refuses_a_server_the_bundle_does_not_vouch_for(
    database: support.Database, invoke: Any
) -> None:
    # The system trust store does not know the local CA: like Aurora without the RDS bundle.
    result = invoke(OUTBOX_DB_TLS="verify", OUTBOX_DB_SSL_CA="/etc/ssl/certs/ca-certificates.crt")
    assert result["ok"] is False and "CERTIFICATE_VERIFY_FAILED" in result["error"]


def test_emf_output_carries_the_lag_of_a_known_backlog(
    database: support.Database, invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    database.insert(support.backlog(12, 3))
    database.query("UPDATE outbox SET created_at = UTC_TIMESTAMP(6) - INTERVAL 120 SECOND WHERE id = 1")
    capsys.readouterr()

    result = invoke({"dry_run": True})

    assert result["ok"] and result["pending"] == 12
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    (emf,) = [b for b in blobs if "OldestPendingAgeSeconds" in b]
    directive = emf["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "OutboxRelay" and directive["Dimensions"] == [["service"]]
    assert emf["service"] == handler.SERVICE  # POWERTOOLS_SERVICE_NAME; the stack name when deployed
    assert {"Name": "OldestPendingAgeSeconds", "Unit": "Seconds"} in directive["Metrics"]
    assert 120 <= emf["OldestPendingAgeSeconds"][0] < 130
    assert emf["PendingCount"] == [12.0]
    # A dry run is an operator action, not a relay run (test_alarm_metrics.py has the relay runs').
    assert emf["OperatorActions"] == [1.0]
    for name in ("Published", "Retried", "DeadLettered", "LeaseLost", "RunSucceeded", "RunDurationMs"):
        assert name not in emf
