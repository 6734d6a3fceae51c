"""Every AWS SDK client the function uses, built here, each with explicit bounds.

botocore's defaults (60 s to connect, 60 s to read, legacy retries) let one unreachable endpoint,
such as a VPC without a route to SQS, hold a run past the Lambda timeout.  Here every call has a
connect and a read timeout and a fixed number of tries (standard retry mode), so its worst case
is known (:meth:`Bounds.worst_case_seconds`).  What else bounds each call:

* SQS (dead letters): the relay core also stops waiting at the run's deadline (``relay.py``).
* Secrets Manager (database and SCRAM passwords, through Powertools): the runtime also stops
  waiting at the run's deadline (``runtime.bounded``); the read goes on in its thread and fills
  the cache if it succeeds.
* MSK IAM: no client.  The signer signs locally with the credentials botocore finds in the
  environment (Lambda sets ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
  ``AWS_SESSION_TOKEN``, the first source of botocore's chain): no network call.
* RDS (Aurora IAM authentication tokens): signed locally by the client too, no call is made.

``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_SQS``, ``AWS_ENDPOINT_URL_SECRETS_MANAGER``), boto3's
own settings, point these clients at moto locally.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

# The longest pause standard mode makes before a retry: up to 1 s for throttling (50 ms otherwise).
_RETRY_PAUSE_SECONDS = 1.0


@dataclass(frozen=True)
class Bounds:
    """How long one SDK call may take: per try, a connect and a read timeout (each socket wait of
    a response), and ``attempts`` tries in all (the first included)."""

    connect_timeout: float
    read_timeout: float
    attempts: int

    def config(self) -> Config:
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # total_max_attempts counts the first try; botocore's "max_attempts" counts retries only.
            retries={"total_max_attempts": self.attempts, "mode": "standard"},
        )

    def worst_case_seconds(self) -> float:
        """A call's duration when every try waits out both timeouts (an answer that trickles in
        byte by byte could take longer: the relay core still stops at the deadline)."""
        tries = self.attempts * (self.connect_timeout + self.read_timeout)
        return tries + (self.attempts - 1) * _RETRY_PAUSE_SECONDS


# SendMessageBatch answers in milliseconds; a dead letter that waits is backed off, not lost.
SQS = Bounds(connect_timeout=2.0, read_timeout=3.0, attempts=2)
# GetSecretValue runs inside a database connect; the runtime waits for it until the deadline only,
# and these bounds end the abandoned call (~7 s at worst).
SECRETS_MANAGER = Bounds(connect_timeout=1.0, read_timeout=2.0, attempts=2)
# generate_db_auth_token makes no call; bounded all the same should one ever be added.
RDS = Bounds(connect_timeout=1.0, read_timeout=2.0, attempts=2)

# boto3's default session is not thread-safe, and the first dead letter builds its client in a
# worker thread while the finalize thread may be reading a secret.
_building = threading.Lock()


def sqs_client() -> SQSClient:
    """The dead-letter queue's client."""
    with _building:
        return boto3.client("sqs", config=SQS.config())


def secrets_client() -> SecretsManagerClient:
    with _building:
        return boto3.client("secretsmanager", config=SECRETS_MANAGER.config())


def secrets_provider() -> SecretsProvider:
    """Powertools' Secrets Manager provider (it caches values per ``max_age``) on the bounded
    client: ``parameters.get_secret`` would build its own with botocore's defaults."""
    return SecretsProvider(boto3_client=secrets_client())


def rds_client(region: str) -> Any:  # no mypy-boto3-rds among the dev dependencies
    """Signs Aurora IAM authentication tokens (``generate_db_auth_token``, local)."""
    with _building:
        return boto3.client("rds", region_name=region, config=RDS.config())
