"""Bounded AWS calls: every client the function uses is built in aws_clients with explicit timeouts
and bounded retries, and the MSK IAM signer makes no network call at all."""

from __future__ import annotations

import ast
import base64
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import botocore.session
import pytest

from outbox_relay import aws_clients
from outbox_relay.config import RelaySettings
from outbox_relay.kafka_auth import MskIamTokenProvider
from tests.unit.deploy_model import PACKAGE, no_problems, template

# Building a client that picks its own settings: boto3's and Powertools' defaults (60 s connect,
# 60 s read, legacy retries) would come back with it.
CLIENT_FACTORIES = {
    ("boto3", "client"),
    ("boto3", "resource"),
    ("boto3", "Session"),
    ("session", "Session"),
    ("parameters", "get_secret"),
    ("parameters", "get_parameter"),
    ("parameters", "get_parameters"),
}
POWERTOOLS_DEFAULT_PROVIDERS = {"get_secret", "get_parameter", "get_parameters", "get_secrets_by_name"}


def _config_of(client: Any) -> tuple[float, float, dict[str, Any]]:
    config = client.meta.config
    return config.connect_timeout, config.read_timeout, dict(config.retries)


@pytest.mark.parametrize(
    ("build", "bounds"),
    [
        (aws_clients.sqs_client, aws_clients.SQS),
        (aws_clients.secrets_client, aws_clients.SECRETS_MANAGER),
        (lambda: aws_clients.secrets_provider().client, aws_clients.SECRETS_MANAGER),
        (lambda: aws_clients.rds_client("eu-west-1"), aws_clients.RDS),
    ],
    ids=["sqs", "secretsmanager", "powertools-secrets-provider", "rds"],
)
def test_every_client_has_explicit_timeouts_and_bounded_retries(
    build: Any, bounds: aws_clients.Bounds
) -> None:
    connect, read, retries = _config_of(build())
    assert (connect, read) == (bounds.connect_timeout, bounds.read_timeout)
    assert retries == {"total_max_attempts": bounds.attempts, "mode": "standard"}
    assert connect <= 2 and read <= 5 and bounds.attempts <= 3, "far below botocore's 60 s / legacy"


def test_a_secret_read_fits_the_shortest_function_timeout() -> None:
    """The secret is read inside a database connect, which knows no deadline: its own bounds must
    end it before the run's deadline of the shortest function the template allows."""
    shortest = template()["Parameters"]["FunctionTimeoutSeconds"]["MinValue"]
    budget = float(shortest) - RelaySettings.stop_margin_seconds
    assert aws_clients.SECRETS_MANAGER.worst_case_seconds() < budget - 1.0


def test_one_module_builds_every_client() -> None:
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in ("aws_clients", "cli"):  # cli: operator commands, which go through runtime
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in CLIENT_FACTORIES:
                    problems.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aws_lambda_powertools"):
                names = {a.name for a in node.names} & POWERTOOLS_DEFAULT_PROVIDERS
                problems += [f"{path.name}:{node.lineno}: imports {n}" for n in sorted(names)]
    no_problems([f"{p}: build the client in aws_clients, with explicit bounds" for p in problems])


def test_the_msk_iam_signer_makes_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Lambda gives a function: its role's credentials in the environment.  The signer finds
    them first in botocore's chain (no IMDS, no STS) and signs locally."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network call: {args}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)

    credentials = botocore.session.Session().get_credentials()
    assert credentials is not None and credentials.method == "env"
    token = MskIamTokenProvider("eu-west-1").token()

    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.hostname == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"] and query["X-Amz-Security-Token"] == ["session-token"]
