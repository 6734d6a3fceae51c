"""Kafka authentication for MSK: IAM (SASL/OAUTHBEARER, port 9098), SCRAM-SHA-512 (port 9096),
TLS (9094), and PLAINTEXT for local work."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
from kafka.net.sasl.oauth import AbstractTokenProvider

from .config import KafkaSettings
from .ports import CredentialsUnavailable

SecretReader = Callable[[str], str]
# Refresh a signed token this long before it expires (tokens live 15 minutes).
REFRESH_BEFORE_MS = 60_000


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """MSK IAM tokens from the function's role, signed locally (no network call).

    kafka-python 3.x accepts only subclasses of its ``AbstractTokenProvider`` (the signer's README
    sample is duck-typed and is rejected).  ``token()`` runs on every SASL handshake and
    re-authentication, so the token is cached until shortly before it expires.
    """

    def __init__(
        self,
        region: str,
        generate: Callable[[str], tuple[str, int]] = MSKAuthTokenProvider.generate_auth_token,
        now_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        super().__init__()
        self.region = region
        self._generate = generate
        self._now_ms = now_ms
        self._token: str | None = None
        self._expires_ms = 0.0

    def token(self) -> str:
        if self._token is None or self._now_ms() >= self._expires_ms - REFRESH_BEFORE_MS:
            self._token, self._expires_ms = self._generate(self.region)
        return self._token


def scram_credentials(read_secret: SecretReader, arn: str) -> tuple[str, str]:
    """MSK SCRAM secrets (name prefix ``AmazonMSK_``) hold ``{"username": ..., "password": ...}``."""
    raw = read_secret(arn)
    try:
        value = json.loads(raw)
    except ValueError:
        raise CredentialsUnavailable(f"SCRAM secret {arn} is not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), str) for k in ("username", "password")
    ):
        raise CredentialsUnavailable(f"SCRAM secret {arn} needs string 'username' and 'password' fields")
    return value["username"], value["password"]


def auth_config(settings: KafkaSettings, read_secret: SecretReader) -> dict[str, Any]:
    """The kafka-python settings for the configured security protocol and SASL mechanism."""
    config: dict[str, Any] = {}
    if settings.security_protocol in ("SSL", "SASL_SSL") and settings.ssl_cafile:
        config["ssl_cafile"] = settings.ssl_cafile
    if settings.sasl_mechanism == "OAUTHBEARER":
        config["sasl_mechanism"] = "OAUTHBEARER"
        config["sasl_oauth_token_provider"] = MskIamTokenProvider(settings.region)
    elif settings.sasl_mechanism == "SCRAM-SHA-512":
        assert settings.sasl_secret_arn is not None  # config validation requires it
        username, password = scram_credentials(read_secret, settings.sasl_secret_arn)
        config.update(
            sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=username, sasl_plain_password=password
        )
    return config
