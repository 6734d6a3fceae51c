"""Opening database connections: credentials from the environment or Secrets Manager."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any

import pymysql

from .config import DatabaseSettings
from .ports import CredentialsUnavailable
from .store_mysql import Connect

SecretReader = Callable[[str], str]


def secret_password(read_secret: SecretReader, arn: str) -> str:
    """The ``password`` field of an RDS-style JSON secret (``{"username": ..., "password": ...}``)."""
    raw = read_secret(arn)
    try:
        value = json.loads(raw)
    except ValueError:
        return raw  # a plain-text secret is the password itself
    password = value.get("password") if isinstance(value, dict) else None
    if isinstance(password, str):
        return password
    raise CredentialsUnavailable(f"secret {arn} has no string 'password' field")


def tls_context(settings: DatabaseSettings) -> ssl.SSLContext | None:
    """TLS to the database: ``required`` encrypts; ``verify`` also checks the CA (e.g. the RDS
    bundle) and the host name.  PyMySQL would otherwise send credentials in clear text."""
    if settings.tls == "off":
        return None
    if settings.tls == "verify":
        return ssl.create_default_context(cafile=settings.ssl_ca)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connector(settings: DatabaseSettings, read_secret: SecretReader | None = None) -> Connect:
    """A function opening one autocommit PyMySQL connection; the password is looked up per
    connection so that a rotated secret is picked up on reconnect."""

    def password() -> str:
        if settings.password is not None:
            return settings.password
        if settings.secret_arn is None or read_secret is None:
            raise ValueError("no database password or secret configured")
        return secret_password(read_secret, settings.secret_arn)

    tls = tls_context(settings)

    def connect() -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=password(),
            database=settings.name,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=30,
            write_timeout=30,
            ssl=tls,
            # PyMySQL otherwise negotiates TLS whenever the server offers it ("preferred").
            ssl_disabled=tls is None,
        )

    return connect
