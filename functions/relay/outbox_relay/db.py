"""Opening database connections: credentials from the environment, Secrets Manager or IAM."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql

from .config import DatabaseSettings
from .ports import CredentialsUnavailable
from .store_mysql import STATEMENT_TIMEOUT_SECONDS, Connect, error_code

# ``read_secret(arn, fresh)``: the secret's string; ``fresh`` bypasses any cache.
SecretReader = Callable[[str, bool], str]
# A signed IAM authentication token for the configured host, port and user.
TokenSigner = Callable[[], str]
ACCESS_DENIED = 1045  # ER_ACCESS_DENIED_ERROR: wrong user or password (or an expired token)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


def secret_credentials(raw: str, arn: str, default_user: str) -> Credentials:
    """The credentials in an RDS-style JSON secret (``{"username": ..., "password": ...}``).

    A string ``username`` wins over ``default_user`` (``OUTBOX_DB_USER``): alternating-users
    rotation switches the secret between two users.  A plain-text secret is the password itself.
    """
    try:
        value = json.loads(raw)
    except ValueError:
        return Credentials(default_user, raw)
    if not isinstance(value, dict):  # plain text that happens to parse as JSON: "123456", "true"
        return Credentials(default_user, raw)
    fields = value
    password, user = fields.get("password"), fields.get("username")
    if not isinstance(password, str):
        raise CredentialsUnavailable(f"secret {arn} has no string 'password' field")
    return Credentials(user if isinstance(user, str) and user else default_user, password)


def iam_token_signer(settings: DatabaseSettings) -> TokenSigner:
    """Signs Aurora IAM authentication tokens (``rds-db:connect``) with the function's role.

    Signing happens locally, without a call to AWS; a token is valid for 15 minutes, so one is
    signed per connection.  The client is built on first use: application installs have no boto3.
    """
    client: Any = None

    def sign() -> str:
        nonlocal client
        try:
            if client is None:
                from . import aws_clients  # noqa: PLC0415 - boto3: the relay's dependency only

                client = aws_clients.rds_client(settings.region)
            token: str = client.generate_db_auth_token(
                DBHostname=settings.host, Port=settings.port, DBUsername=settings.user, Region=settings.region
            )
        except Exception as exc:  # no credentials, a botocore error: a run result, not a crash
            detail = " ".join(str(exc).split())
            raise CredentialsUnavailable(f"cannot sign an IAM database token: {detail}") from exc
        return token

    return sign


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


@dataclass(frozen=True)
class CredentialsSource:
    """Each connection's credentials; ``refetch`` (secrets only) bypasses the secret's cache."""

    current: Callable[[], Credentials]
    refetch: Callable[[], Credentials] | None = None


def credentials_source(
    settings: DatabaseSettings, read_secret: SecretReader | None, sign_token: TokenSigner | None
) -> CredentialsSource:
    """``OUTBOX_DB_PASSWORD``, an IAM token for ``OUTBOX_DB_USER``, or the secret's."""
    if settings.iam_auth:
        sign = sign_token or iam_token_signer(settings)
        return CredentialsSource(lambda: Credentials(settings.user, sign()))
    if settings.password is not None:
        fixed = Credentials(settings.user, settings.password)
        return CredentialsSource(lambda: fixed)
    arn = settings.secret_arn
    if arn is None or read_secret is None:
        raise ValueError("no database password, secret or IAM authentication configured")

    def from_secret(fresh: bool) -> Credentials:
        return secret_credentials(read_secret(arn, fresh), arn, settings.user)

    return CredentialsSource(lambda: from_secret(False), lambda: from_secret(True))


def connector(
    settings: DatabaseSettings,
    read_secret: SecretReader | None = None,
    sign_token: TokenSigner | None = None,
    timeout: Callable[[], float] | None = None,
) -> Connect:
    """A function opening one autocommit PyMySQL connection.  ``timeout`` (seconds, asked at each
    connect) bounds its handshake and first statements, e.g. by the invocation's deadline.

    Credentials are looked up per connection, so a rotation is picked up on reconnect.  With a
    secret, its ``username`` (when a string) wins over ``OUTBOX_DB_USER``; and when the server
    denies access, the secret is read once more, bypassing the cache (it was probably rotated
    since it was cached), and the connection tried again with what changed.  With IAM
    authentication (``OUTBOX_DB_IAM_AUTH``), the password is a token signed for this connection;
    Aurora asks for it with ``mysql_clear_password``, which PyMySQL answers, over TLS only.
    """
    credentials = credentials_source(settings, read_secret, sign_token)
    tls = tls_context(settings)

    def open_as(who: Credentials) -> pymysql.connections.Connection[Any]:
        seconds = STATEMENT_TIMEOUT_SECONDS if timeout is None else timeout()
        return pymysql.connect(
            host=settings.host,
            port=settings.port,
            user=who.user,
            password=who.password,
            database=settings.name,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=min(settings.connect_timeout_seconds, seconds),
            # The handshake and the session set-up read with these: bounded like any statement.
            read_timeout=seconds,
            write_timeout=seconds,
            ssl=tls,
            # PyMySQL otherwise negotiates TLS whenever the server offers it ("preferred").
            ssl_disabled=tls is None,
        )

    def connect() -> pymysql.connections.Connection[Any]:
        cached = credentials.current()
        try:
            return open_as(cached)
        except pymysql.err.OperationalError as exc:
            if credentials.refetch is None or error_code(exc) != ACCESS_DENIED:
                raise
            denied = exc
        fresh = credentials.refetch()
        if fresh == cached:
            raise denied  # the secret still holds what was refused: nothing new to try
        return open_as(fresh)

    return connect
