"""MSK authentication settings: IAM tokens, SCRAM credentials, TLS."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlparse

import pytest
from kafka import KafkaProducer
from kafka import errors as kafka_errors

from outbox_relay.config import KafkaSettings
from outbox_relay.kafka_auth import MskIamTokenProvider, auth_config, scram_credentials
from outbox_relay.publisher_kafka import producer_config

IAM = KafkaSettings(
    bootstrap_servers=("127.0.0.1:9",),
    security_protocol="SASL_SSL",
    sasl_mechanism="OAUTHBEARER",
    region="eu-west-1",
)


def test_iam_token_is_a_locally_signed_kafka_cluster_connect_url() -> None:
    token = MskIamTokenProvider("eu-west-1").token()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert parsed.hostname == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("testing/")  # the (fake) role credentials


def test_iam_token_is_cached_until_a_minute_before_expiry() -> None:
    calls: list[str] = []
    now = {"ms": 0.0}

    def generate(region: str) -> tuple[str, int]:
        calls.append(region)
        return f"token-{len(calls)}", 900_000

    provider = MskIamTokenProvider("eu-west-1", generate=generate, now_ms=lambda: now["ms"])
    assert provider.token() == provider.token() == "token-1"
    now["ms"] = 900_000 - 60_000
    assert provider.token() == "token-2"


def test_kafka_python_accepts_the_iam_provider() -> None:
    # kafka-python 3.x rejects duck-typed providers with KafkaConfigurationError before
    # connecting; ours gets as far as trying to bootstrap (nothing listens on port 9).
    config = {**producer_config(IAM, bootstrap_timeout_ms=300), **auth_config(IAM, lambda arn: "")}
    assert config["sasl_mechanism"] == "OAUTHBEARER"
    with pytest.raises(kafka_errors.KafkaTimeoutError):
        KafkaProducer(**config)


def test_scram_reads_username_and_password_from_the_secret() -> None:
    settings = KafkaSettings(
        bootstrap_servers=("b:9096",),
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_secret_arn="arn:secret:AmazonMSK_relay",
    )
    secrets = {"arn:secret:AmazonMSK_relay": json.dumps({"username": "relay", "password": "s3cret"})}
    assert auth_config(settings, secrets.__getitem__) == {
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "relay",
        "sasl_plain_password": "s3cret",
    }


@pytest.mark.parametrize("secret", ["not json", json.dumps({"username": "x"}), json.dumps(["a"])])
def test_scram_secret_without_credentials_is_a_clear_error(secret: str) -> None:
    with pytest.raises(ValueError, match="SCRAM secret arn:s"):
        scram_credentials(lambda arn: secret, "arn:s")


def test_tls_and_plaintext_need_no_sasl() -> None:
    tls = KafkaSettings(bootstrap_servers=("b:9094",), security_protocol="SSL", ssl_cafile="/etc/ssl/ca.pem")
    assert auth_config(tls, lambda arn: "") == {"ssl_cafile": "/etc/ssl/ca.pem"}
    assert auth_config(KafkaSettings(bootstrap_servers=("b:9092",)), lambda arn: "") == {}
