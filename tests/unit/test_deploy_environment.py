"""The environment: every variable the code reads that a deploy needs is declared on RelayFunction, every
declared one is read, the rest is an explicit partition documented in README; env.json sets only declared
ones; each deployment's environment passes load_config (paths: integration/test_lambda_package.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import botocore
import pytest

from outbox_relay.config import load_config
from tests.unit.deploy_model import (
    DEPLOYMENTS,
    JANITOR_HANDLER,
    REGION,
    ROOT,
    SCENARIOS,
    Stack,
    code_reads,
    declared_variables,
    function_environment,
    lambda_environment,
    no_problems,
    scan_env_reads,
    transformed,
)

# Optional tuning, documented in README's configuration table: each has a default that suits a
# deployment, so the template intentionally does not declare it (set it on the function to change it).
OPTIONAL_TUNING = frozenset(
    {
        "OUTBOX_DB_LOCK_WAIT_TIMEOUT_SECONDS",
        "OUTBOX_BACKOFF_BASE_SECONDS",
        "OUTBOX_BACKOFF_MAX_SECONDS",
        "OUTBOX_LEASE_MARGIN_SECONDS",
        "OUTBOX_STOP_MARGIN_SECONDS",
        "OUTBOX_MAX_MESSAGE_BYTES",
        "OUTBOX_REQUIRE_JSON",
        "OUTBOX_MAX_SHARDS_PER_RUN",
        "OUTBOX_POLL_INTERVAL_MS",
        "OUTBOX_JANITOR_BATCH_SIZE",
        "KAFKA_SSL_CAFILE",  # MSK's certificates chain to a public CA: the system trust store
        "KAFKA_CLIENT_ID",
        "KAFKA_LINGER_MS",
        "KAFKA_BATCH_BYTES",
        "KAFKA_COMPRESSION_TYPE",
        "KAFKA_REQUEST_TIMEOUT_MS",
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "KAFKA_MAX_BLOCK_MS",
    }
)
# Local runs only: a deployment reads the password from Secrets Manager (OUTBOX_DB_SECRET_ARN).
LOCAL_ONLY = frozenset({"OUTBOX_DB_PASSWORD"})
# Lambda sets these itself and rejects a function that declares one (reserved keys).
LAMBDA_RESERVED = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)
# Declared for libraries, not read by the relay's code.
READ_BY_LIBRARIES = {
    "AWS_ENDPOINT_URL": "botocore (empty = the regional endpoint; env.json points it at moto)",
}


def powertools_variables() -> set[str]:
    from aws_lambda_powertools.shared import constants

    return {v for v in vars(constants).values() if isinstance(v, str) and v.startswith("POWERTOOLS_")}


def check_environment(read: set[str], declared: set[str], powertools: set[str]) -> list[str]:
    """The partition: read = needed by a deploy (declared) + optional tuning + local only + set by
    Lambda; declared = read + Powertools' own + read by libraries."""
    problems = []
    lambda_set = {n for n in read if n in LAMBDA_RESERVED or n.startswith("AWS_LAMBDA_")}
    needed = read - OPTIONAL_TUNING - LOCAL_ONLY - lambda_set
    problems += [
        f"{n} is read and a deploy needs it, but RelayFunction does not declare it"
        for n in sorted(needed - declared)
    ]
    problems += [
        f"{n} is in an allow-list but nothing reads it any more"
        for n in sorted((OPTIONAL_TUNING | LOCAL_ONLY) - read)
    ]
    problems += [
        f"{n} is declared but listed as optional tuning: move it off the list"
        for n in sorted(OPTIONAL_TUNING & declared)
    ]
    problems += [
        f"{n} is local only (deploys use Secrets Manager) but declared" for n in sorted(LOCAL_ONLY & declared)
    ]
    problems += [
        f"{n} is reserved by Lambda: a deploy that declares it fails"
        for n in sorted(LAMBDA_RESERVED & declared)
    ]
    for name in sorted(declared - read - set(READ_BY_LIBRARIES)):
        if name.startswith("POWERTOOLS_"):
            if name not in powertools:
                problems.append(f"{name} is declared but is not a Powertools setting")
        else:
            problems.append(f"{name} is declared but nothing reads it")
    return problems


def readme_configuration_names() -> set[str]:
    """Backquoted variable names in the rows of README's tables."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]{2,})`", row)}


def test_the_scan_finds_every_kind_of_read() -> None:
    source = (
        "import os\n"
        "def f(r, env, name):\n"
        '    r.text("A_TEXT"); r.number("B_NUM", 1, int, 0, 9); r.flag("C_FLAG", True)\n'
        '    r.choice("D_CHOICE", None, ("x",)); os.environ.get("E_GET"); os.environ["F_ITEM"]\n'
        '    env.get("G_ENV"); os.getenv("H_GETENV"); "I_IN" in os.environ; self.env.get("J_ATTR")\n'
        '    os.environ.get(name); r.text(name); event.get("detail-type")\n'
    )
    names, dynamic = scan_env_reads({"m.py": source})
    assert set(names) == {
        "A_TEXT",
        "B_NUM",
        "C_FLAG",
        "D_CHOICE",
        "E_GET",
        "F_ITEM",
        "G_ENV",
        "H_GETENV",
        "I_IN",
        "J_ATTR",
    }
    assert dynamic == ["m.py:6: os.environ.get(name)", "m.py:6: r.text(name)"]
    assert {"OUTBOX_DB_HOST", "KAFKA_LINGER_MS", "AWS_REGION", "POWERTOOLS_SERVICE_NAME"} <= set(code_reads())


def test_every_variable_a_deploy_needs_is_declared_and_every_declared_one_is_read() -> None:
    declared = declared_variables(transformed(SCENARIOS["msk-iam"]))
    no_problems(check_environment(set(code_reads()), declared, powertools_variables()))


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_the_janitor_function_has_the_relay_functions_environment(deployment: str) -> None:
    """Same code, and a configuration validated as a whole: JanitorFunction declares exactly
    RelayFunction's variables with the same values, so every check of the relay's environment
    here holds for the janitor's (its role, not its environment, keeps it from SQS and MSK)."""
    parameters, region = DEPLOYMENTS[deployment]
    stack = Stack(transformed(parameters), parameters, region=region)
    assert function_environment(stack, JANITOR_HANDLER) == function_environment(stack)


def test_environment_checker_reports_bad_input() -> None:
    read = set(code_reads())
    declared = declared_variables(transformed(SCENARIOS["msk-iam"]))
    powertools = powertools_variables()
    assert "POWERTOOLS_SERVICE_NAME" in powertools and "POWERTOOLS_METRICS_NAMESPACE" in powertools
    assert check_environment(read, declared - {"OUTBOX_DB_HOST"}, powertools) == [
        "OUTBOX_DB_HOST is read and a deploy needs it, but RelayFunction does not declare it"
    ]
    assert check_environment(read, declared | {"OUTBOX_UNUSED"}, powertools) == [
        "OUTBOX_UNUSED is declared but nothing reads it"
    ]
    assert check_environment(read, declared | {"POWERTOOLS_NO_SUCH"}, powertools) == [
        "POWERTOOLS_NO_SUCH is declared but is not a Powertools setting"
    ]
    assert check_environment(read, declared | {"AWS_REGION", "OUTBOX_DB_PASSWORD"}, powertools) == [
        "OUTBOX_DB_PASSWORD is local only (deploys use Secrets Manager) but declared",
        "AWS_REGION is reserved by Lambda: a deploy that declares it fails",
    ]
    assert check_environment(read - {"KAFKA_LINGER_MS"}, declared, powertools) == [
        "KAFKA_LINGER_MS is in an allow-list but nothing reads it any more"
    ]


def test_every_variable_the_code_reads_is_in_readme_configuration_table() -> None:
    no_problems(
        [
            f"{n} is read but not in README's tables"
            for n in sorted(set(code_reads()) - readme_configuration_names())
        ]
    )
    assert readme_configuration_names() >= OPTIONAL_TUNING


def test_an_empty_aws_endpoint_url_means_the_regional_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The template declares AWS_ENDPOINT_URL="" (so that sam local's env.json can set it): botocore
    must treat empty as unset.  Checked with the botocore the layer ships."""
    pinned = re.search(r"^botocore==([^\s\\]+)", (ROOT / "layers/deps/requirements.txt").read_text(), re.M)
    assert pinned and pinned[1] == botocore.__version__

    def endpoints() -> dict[str, str]:
        session = boto3.session.Session(region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        return {
            "sqs": session.client("sqs").meta.endpoint_url,
            "secretsmanager": session.client("secretsmanager").meta.endpoint_url,
        }

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    assert set(endpoints().values()) == {"http://127.0.0.1:5000"}  # botocore does read it
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    assert endpoints() == {s: f"https://{s}.{REGION}.amazonaws.com" for s in ("sqs", "secretsmanager")}


def test_env_json_sets_only_variables_the_template_declares() -> None:
    """`sam local invoke --env-vars env.json` ignores variables the template does not declare."""
    env = json.loads((ROOT / "env.json").read_text())
    declared = declared_variables(transformed(SCENARIOS["msk-iam"]))
    assert set(env) == {"RelayFunction"}
    no_problems(
        [
            f"{n} is set in env.json but not declared (SAM ignores it)"
            for n in sorted(set(env["RelayFunction"]) - declared)
        ]
    )


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_each_deployment_environment_is_a_valid_configuration(deployment: str, tmp_path: Path) -> None:
    """The environment a deploy renders (parameters through intrinsics) passes the relay's own
    validation.  Paths into the artifacts (/opt, /var/task) stand in as local files here; that they
    exist in the built artifacts is tests/integration/test_lambda_package.py's check."""
    parameters, region = DEPLOYMENTS[deployment]
    env = function_environment(Stack(transformed(parameters), parameters, region=region))
    for name, value in env.items():
        if value.startswith(("/opt/", "/var/task/")):
            (tmp_path / name).write_text("stand-in")
            env[name] = str(tmp_path / name)
    load_config(lambda_environment(env, region))
