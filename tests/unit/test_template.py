"""The SAM application: lint-clean, transforms, alarms (IAM and environment: test_deploy_iam,
test_deploy_environment)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
PARAMETERS = {
    "SubnetIds": "subnet-1,subnet-2",
    "SecurityGroupIds": "sg-1",
    "DbHost": "db.cluster-x.eu-west-1.rds.amazonaws.com",
    "DbName": "shop",
    "DbUser": "relay",
    "DbSecretArn": "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdEf",
    "KafkaBootstrapServers": "b-1.x.kafka.eu-west-1.amazonaws.com:9098",
    "MskClusterArn": "arn:aws:kafka:eu-west-1:111111111111:cluster/shop/1234-abcd",
}


class _ManagedPolicies:
    """The translator asks IAM for managed policy ARNs; tests answer offline."""

    def load(self) -> dict[str, str]:
        return {}


def transformed() -> dict[str, Any]:
    template = yaml_parse((ROOT / "template.yaml").read_text())
    # What `sam package` does before CloudFormation sees the template: code goes to S3.
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = f"s3://artifacts/{key.lower()}.zip"
    result: dict[str, Any] = transform(template, PARAMETERS, _ManagedPolicies())
    return result


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in transformed()["Resources"].items() if v["Type"] == kind}


def test_cfn_lint_is_clean() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(ROOT / "template.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_sam_transform_gives_an_arm64_python_relay_and_janitor_on_their_own_schedules() -> None:
    functions = resources("AWS::Lambda::Function")
    assert set(functions) == {"RelayFunction", "JanitorFunction"}
    relay, janitor = functions["RelayFunction"]["Properties"], functions["JanitorFunction"]["Properties"]
    for props in (relay, janitor):
        assert props["Runtime"] == "python3.13" and props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert set(props["VpcConfig"]) == {"SubnetIds", "SecurityGroupIds"}
        env = props["Environment"]["Variables"]
        assert "OUTBOX_DB_PASSWORD" not in env and env["OUTBOX_DB_SECRET_ARN"] == {"Ref": "DbSecretArn"}
    assert relay["Handler"] == "outbox_relay.handler.lambda_handler"
    assert janitor["Handler"] == "outbox_relay.handler.janitor_handler"
    # -1: no reservation (deploys at the new-account concurrency limit); the janitor never has one.
    assert relay["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReservesConcurrency", {"Ref": "ReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert "ReservedConcurrentExecutions" not in janitor
    assert relay["LoggingConfig"]["LogGroup"] != janitor["LoggingConfig"]["LogGroup"]
    # The relay's expression comes from the RelaySchedule mapping (its alarms' windows follow it).
    relay_expression = {"Fn::FindInMap": ["RelaySchedule", {"Ref": "ScheduleRateMinutes"}, "Expression"]}
    schedules = {
        "ScheduleRateMinutes"
        if s["Properties"]["ScheduleExpression"] == relay_expression
        else s["Properties"]["ScheduleExpression"]["Ref"]: s["Properties"]
        for s in resources("AWS::Scheduler::Schedule").values()
    }
    assert set(schedules) == {"ScheduleRateMinutes", "JanitorScheduleExpression"}
    # The relay's schedule also stops with the emergency brake (ReservedConcurrency=0).
    assert schedules["ScheduleRateMinutes"]["State"] == {"Fn::If": ["RelayRuns", "ENABLED", "DISABLED"]}
    assert schedules["JanitorScheduleExpression"]["State"] == {"Ref": "ScheduleState"}
    for schedule in schedules.values():
        assert schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    targets = {name: s["Target"]["Arn"]["Fn::GetAtt"][0] for name, s in schedules.items()}
    assert targets == {"ScheduleRateMinutes": "RelayFunction", "JanitorScheduleExpression": "JanitorFunction"}
    assert "action" not in json.loads(schedules["ScheduleRateMinutes"]["Target"]["Input"])
    assert json.loads(schedules["JanitorScheduleExpression"]["Target"]["Input"])["action"] == "janitor"
    invoke_configs = resources("AWS::Lambda::EventInvokeConfig").values()
    assert len(invoke_configs) == 2
    assert all(c["Properties"]["MaximumRetryAttempts"] == 0 for c in invoke_configs)


def test_alarms_cover_lag_dead_letters_dlq_errors_missing_runs_drops_janitor_and_dead_rows() -> None:
    """Which alarms exist; that each one's metric is the one the code emits is test_alarms.py's."""
    alarms = resources("AWS::CloudWatch::Alarm")
    by_metric = {a["Properties"]["MetricName"]: a["Properties"] for a in alarms.values()}
    assert set(by_metric) == {
        "OldestPendingAgeSeconds",
        "DeadLettered",
        "TopicUnavailable",
        "ApproximateNumberOfMessagesVisible",
        "Errors",
        "RunSucceeded",
        "AsyncEventsDropped",
        "JanitorSucceeded",
        "DeadCount",
    }
    # Missing runs breach (unless the runs were stopped on purpose: tests/unit/test_alarms.py).
    for metric in ("RunSucceeded", "JanitorSucceeded"):
        assert by_metric[metric]["TreatMissingData"]["Fn::If"][1] == "breaching"
        assert by_metric[metric]["ComparisonOperator"] == "LessThanThreshold"
    for metric in (
        "OldestPendingAgeSeconds",
        "DeadLettered",
        "RunSucceeded",
        "JanitorSucceeded",
        "DeadCount",
    ):
        assert by_metric[metric]["Namespace"] == "OutboxRelay"
        assert by_metric[metric]["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}]
    assert resources("AWS::CloudWatch::Dashboard")


def test_dead_letter_queue_is_encrypted_with_its_own_retention() -> None:
    queues = resources("AWS::SQS::Queue")
    assert set(queues) == {"DeadLetterQueue", "ScheduleDeadLetterQueue"}  # the relay's, the schedules'
    assert all(q["Properties"]["SqsManagedSseEnabled"] is True for q in queues.values())
    queue = queues["DeadLetterQueue"]
    assert queue["Properties"]["MessageRetentionPeriod"] == {"Ref": "DeadLetterRetentionSeconds"}


def test_samconfig_has_dev_and_prod() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    for env in ("default", "prod"):
        assert config[env]["global"]["parameters"]["stack_name"].startswith("outbox-relay-")
        overrides = config[env]["deploy"]["parameters"]["parameter_overrides"]
        assert "MskClusterArn=" in overrides and "DbSecretArn=" in overrides


def test_the_layer_is_named_per_stack_and_both_functions_share_one_environment() -> None:
    (layer,) = resources("AWS::Lambda::LayerVersion").values()
    assert layer["Properties"]["LayerName"] == {"Fn::Sub": "${AWS::StackName}-deps"}
    functions = resources("AWS::Lambda::Function")
    envs = [f["Properties"]["Environment"]["Variables"] for f in functions.values()]
    assert envs[0] == envs[1], "the configuration is validated as a whole: one environment"
    assert envs[0]["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert envs[0]["POWERTOOLS_METRICS_NAMESPACE"] == "OutboxRelay"
    template = yaml_parse((ROOT / "template.yaml").read_text())
    assert "Environment" in template["Globals"]["Function"]
    assert all(
        "Environment" not in r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    )


def test_every_layer_pin_is_exact_and_hashed_and_the_top_level_ones_are_pyprojects() -> None:
    """The layer's pins are generated from pyproject.toml (`make lock`; `make lint` re-resolves
    and compares): every requirement is `name==version` with hashes, and every pin of the relay
    extra and the base dependencies appears as is."""
    text = (ROOT / "layers/deps/requirements.txt").read_text()
    pins: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash=sha256:"):
            pins[current].append(stripped)
            continue
        requirement = stripped.rstrip(" \\")
        assert "==" in requirement and ";" not in requirement, requirement
        current = requirement
        pins[current] = []
    assert pins and all(hashes for hashes in pins.values()), "every pin carries its hashes"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    top_level = project["dependencies"] + project["optional-dependencies"]["relay"]
    normalized = {p.lower().replace("_", "-") for p in pins}
    for requirement in top_level:
        name = requirement.split("[")[0].split("==")[0]
        version = requirement.split("==")[1]
        assert f"{name.lower().replace('_', '-')}=={version}" in normalized, requirement
