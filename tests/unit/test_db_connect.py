"""Opening connections (issue 10, items 1 and 4): whose credentials, what access denied does,
Aurora IAM tokens, and how the store recovers from a server that no longer takes writes.
No database: PyMySQL's ``connect`` and connections are fakes."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import boto3
import pymysql
import pytest

from outbox_relay.config import ConfigError, DatabaseSettings, load_config
from outbox_relay.db import Credentials, connector, iam_token_signer, secret_credentials
from outbox_relay.ports import CredentialsUnavailable, StoreUnavailable
from outbox_relay.sql import OutboxSql
from outbox_relay.store_mysql import READ_ONLY, MySQLOutboxStore, Recovery, recovery

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"
SETTINGS = DatabaseSettings(
    host="db.cluster-abc.eu-west-1.rds.amazonaws.com",
    port=3306,
    name="shop",
    user="relay",
    password=None,
    secret_arn=ARN,
    region="eu-west-1",
)
DENIED = pymysql.err.OperationalError(1045, "Access denied for user 'relay'@'10.0.0.1' (using password: YES)")


# --- whose credentials ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ({"username": "relay_clone", "password": "p"}, Credentials("relay_clone", "p")),
        ({"password": "p"}, Credentials("relay", "p")),
        ({"username": "", "password": "p"}, Credentials("relay", "p")),
        ({"username": 7, "password": "p"}, Credentials("relay", "p")),
    ],
)
def test_the_secrets_username_wins_over_outbox_db_user_when_it_is_a_string(
    secret: dict[str, Any], expected: Credentials
) -> None:
    assert secret_credentials(json.dumps(secret), ARN, "relay") == expected


@pytest.mark.parametrize("plain", ["s3cret", "123456", "true", "null", '["p"]', '"quoted"'])
def test_a_plain_text_secret_is_the_password_of_outbox_db_user(plain: str) -> None:
    # Only a JSON object is structured: plain text that happens to parse as JSON is still a password.
    assert secret_credentials(plain, ARN, "relay") == Credentials("relay", plain)


@pytest.mark.parametrize("secret", ['{"username": "relay"}', "{}", '{"password": 1}'])
def test_a_secret_without_a_string_password_is_one_line(secret: str) -> None:
    with pytest.raises(CredentialsUnavailable, match="has no string 'password' field"):
        secret_credentials(secret, ARN, "relay")


# --- access denied: one read past the cache -----------------------------------------------


class FakeServer:
    """``pymysql.connect`` stand-in: accepts the credentials ``accepts`` says yes to, else raises
    ``refusal``; records every attempt's arguments."""

    def __init__(self) -> None:
        self.accepts: Callable[[Credentials], bool] = lambda who: False
        self.refusal: Exception = DENIED
        self.attempts: list[dict[str, Any]] = []

    def connect(self, **kwargs: Any) -> str:
        self.attempts.append(kwargs)
        if not self.accepts(Credentials(kwargs["user"], kwargs["password"])):
            raise self.refusal
        return "connection"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(pymysql, "connect", fake.connect)
    return fake


class Secret:
    """A secret behind a cache: ``fresh`` reads see ``current``, others the ``cached`` value."""

    def __init__(self, cached: dict[str, str], current: dict[str, str]) -> None:
        self.cached, self.current = cached, current
        self.reads: list[bool] = []

    def read(self, arn: str, fresh: bool) -> str:
        assert arn == ARN
        self.reads.append(fresh)
        return json.dumps(self.current if fresh else self.cached)


def test_access_denied_reads_the_secret_past_the_cache_once_and_connects_with_it(server: FakeServer) -> None:
    secret = Secret({"username": "relay", "password": "old"}, {"username": "relay_clone", "password": "new"})
    server.accepts = lambda who: who == Credentials("relay_clone", "new")

    connection: Any = connector(SETTINGS, secret.read)()

    assert connection == "connection"

    assert secret.reads == [False, True]
    assert [(a["user"], a["password"]) for a in server.attempts] == [("relay", "old"), ("relay_clone", "new")]


def test_access_denied_with_an_unchanged_secret_raises_the_denial_without_a_second_attempt(
    server: FakeServer,
) -> None:
    secret = Secret({"username": "relay", "password": "wrong"}, {"username": "relay", "password": "wrong"})

    with pytest.raises(pymysql.err.OperationalError) as raised:
        connector(SETTINGS, secret.read)()

    assert raised.value is DENIED and secret.reads == [False, True] and len(server.attempts) == 1


def test_a_still_wrong_fresh_secret_raises_the_second_denial(server: FakeServer) -> None:
    secret = Secret({"password": "old"}, {"password": "also-wrong"})

    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        connector(SETTINGS, secret.read)()

    assert secret.reads == [False, True] and len(server.attempts) == 2


@pytest.mark.parametrize(
    "refusal",
    [
        pymysql.err.OperationalError(2003, "Can't connect to MySQL server"),
        pymysql.err.OperationalError(1049, "x"),
    ],
)
def test_other_connect_errors_do_not_read_the_secret_again(server: FakeServer, refusal: Exception) -> None:
    server.refusal = refusal
    secret = Secret({"password": "p"}, {"password": "q"})

    with pytest.raises(pymysql.err.OperationalError):
        connector(SETTINGS, secret.read)()

    assert secret.reads == [False]


def test_a_password_from_the_environment_is_never_refetched(server: FakeServer) -> None:
    settings = replace(SETTINGS, password="pw", secret_arn=None)

    with pytest.raises(pymysql.err.OperationalError):
        connector(settings)()

    assert [(a["user"], a["password"]) for a in server.attempts] == [("relay", "pw")]


# --- Aurora IAM authentication -------------------------------------------------------------

IAM = replace(SETTINGS, secret_arn=None, iam_auth=True, tls="required")


def test_iam_auth_connects_with_a_token_signed_per_connection_over_tls(server: FakeServer) -> None:
    tokens = iter(["token-1", "token-2"])
    server.accepts = lambda who: True
    connect = connector(IAM, sign_token=lambda: next(tokens))

    connect()
    connect()

    assert [(a["user"], a["password"]) for a in server.attempts] == [
        ("relay", "token-1"),
        ("relay", "token-2"),
    ]
    assert all(a["host"] == IAM.host and a["port"] == 3306 for a in server.attempts)
    assert all(a["ssl"] is not None and a["ssl_disabled"] is False for a in server.attempts)


def test_iam_access_denied_is_not_retried(server: FakeServer) -> None:
    with pytest.raises(pymysql.err.OperationalError):
        connector(IAM, sign_token=lambda: "token")()
    assert len(server.attempts) == 1


def test_the_iam_token_is_signed_offline_for_the_host_port_and_user() -> None:
    token = iam_token_signer(IAM)()  # the tests' fake AWS credentials; no network call

    url = urllib.parse.urlsplit("https://" + token)
    query = urllib.parse.parse_qs(url.query)
    assert (url.hostname, url.port) == (IAM.host, 3306) and url.path == "/"
    assert query["Action"] == ["connect"] and query["DBUser"] == ["relay"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Credential"][0].endswith("/eu-west-1/rds-db/aws4_request")
    assert len(query["X-Amz-Signature"][0]) == 64


def test_an_iam_token_that_cannot_be_signed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found

    with pytest.raises(CredentialsUnavailable, match="cannot sign an IAM database token: Unable to locate"):
        iam_token_signer(IAM)()


BASE_ENV = {
    "OUTBOX_DB_HOST": "db",
    "OUTBOX_DB_NAME": "shop",
    "OUTBOX_DB_USER": "relay",
    "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
    "DLQ_QUEUE_URL": "https://sqs/q",
    "AWS_REGION": "eu-west-1",
}


# IAM needs TLS verify; the configuration only checks that the CA bundle is a file.
IAM_TLS = {"OUTBOX_DB_IAM_AUTH": "true", "OUTBOX_DB_TLS": "verify", "OUTBOX_DB_SSL_CA": __file__}


def test_iam_auth_configuration() -> None:
    db = load_config({**BASE_ENV, **IAM_TLS}).database
    assert db.iam_auth and db.region == "eu-west-1" and db.password is None and db.secret_arn is None


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"OUTBOX_DB_TLS": "off"}, "OUTBOX_DB_IAM_AUTH=true needs OUTBOX_DB_TLS=verify"),
        ({"OUTBOX_DB_TLS": "required"}, "OUTBOX_DB_IAM_AUTH=true needs OUTBOX_DB_TLS=verify"),
        (
            {"OUTBOX_DB_PASSWORD": "pw"},
            "OUTBOX_DB_PASSWORD and OUTBOX_DB_IAM_AUTH=true are mutually exclusive",
        ),
        (
            {"OUTBOX_DB_SECRET_ARN": ARN},
            "OUTBOX_DB_SECRET_ARN and OUTBOX_DB_IAM_AUTH=true are mutually exclusive",
        ),
        ({"AWS_REGION": ""}, "AWS_REGION is required with OUTBOX_DB_IAM_AUTH=true"),
    ],
)
def test_iam_auth_configuration_problems(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        load_config({**BASE_ENV, **IAM_TLS, **env})


def test_without_a_password_secret_or_iam_the_configuration_says_all_three() -> None:
    with pytest.raises(
        ConfigError, match=r"OUTBOX_DB_SECRET_ARN \(deployed\) is required, or OUTBOX_DB_IAM_AUTH=true"
    ):
        load_config(BASE_ENV)


# --- a server that no longer takes writes -------------------------------------------------


@pytest.mark.parametrize("code", sorted(READ_ONLY))
def test_read_only_answers_mean_reconnect_once(code: int) -> None:
    assert recovery(pymysql.err.OperationalError(code, "read only")) is Recovery.RECONNECT_ONCE
    assert recovery(pymysql.err.InternalError(code, "read only")) is Recovery.RECONNECT_ONCE


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (pymysql.err.OperationalError(1213, "Deadlock found"), Recovery.ROLLBACK_AND_RETRY),
        (pymysql.err.OperationalError(1205, "Lock wait timeout"), Recovery.ROLLBACK_AND_RETRY),
        (pymysql.err.OperationalError(2013, "Lost connection"), Recovery.RECONNECT),
        (pymysql.err.OperationalError(0, ""), Recovery.RECONNECT),
        (pymysql.err.InterfaceError(0, ""), Recovery.RECONNECT),
        (ConnectionResetError(104, "reset"), Recovery.RECONNECT),
        (DENIED, Recovery.FAIL),
        (pymysql.err.ProgrammingError(1146, "Table 'shop.outbox' doesn't exist"), Recovery.FAIL),
        (pymysql.err.OperationalError(1142, "UPDATE command denied"), Recovery.FAIL),
    ],
)
def test_other_errors_keep_their_recovery(exc: Exception, expected: Recovery) -> None:
    assert recovery(exc) is expected


class FakeConnection:
    """A connection to a server that can or cannot take writes."""

    def __init__(self, writable: bool) -> None:
        self.writable = writable
        self.closed = False
        self.rollbacks = 0

    def cursor(self) -> FakeConnection:
        return self

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> int:
        return 0  # the session setup

    def write(self) -> str:
        if not self.writable:
            raise pymysql.err.OperationalError(
                1290,
                "The MySQL server is running with the --read-only option so it cannot execute this statement",
            )
        return "written"

    def rollback(self) -> None:
        self.rollbacks += 1

    def close(self) -> None:
        self.closed = True


def store_over(*servers: bool) -> tuple[MySQLOutboxStore, list[Any]]:
    """A store whose successive connections reach servers that are writable or not."""
    made: list[Any] = []
    answers = iter(servers)

    def connect() -> Any:
        made.append(FakeConnection(next(answers)))
        return made[-1]

    return MySQLOutboxStore(connect, OutboxSql()), made


def test_a_read_only_server_is_left_and_a_new_connection_reaches_the_new_writer() -> None:
    store, made = store_over(False, True)

    assert store.run(lambda conn: conn.write(), "finalize") == "written"  # type: ignore[attr-defined]

    assert [c.closed for c in made] == [True, False] and store._conn is made[1]


def test_a_server_still_read_only_on_a_new_connection_stops_the_operation_with_no_connection_kept() -> None:
    store, made = store_over(False, False, True)

    with pytest.raises(StoreUnavailable, match=r"^finalize: \(1290\) The MySQL server is running with the"):
        store.run(lambda conn: conn.write(), "finalize")  # type: ignore[attr-defined]

    assert len(made) == 2 and all(c.closed for c in made) and store._conn is None
