"""The alarms of the transformed template watch what the code emits: each custom alarm's metric is a
name of outbox_relay.ports.MetricName that the relay or the handler emits, in the namespace and with the
`service` dimension the functions' Powertools settings give it; the AWS alarms watch the relay function
and the queue.  Their actions go to the one topic the parameters pick, and are off while the relay does
not run.  (The metrics being emitted in runs that should trip each alarm:
tests/integration/test_alarm_metrics.py.)"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from aws_lambda_powertools import Metrics

from outbox_relay.metrics_emf import EmfMetrics
from outbox_relay.ports import MetricName
from tests.unit.deploy_model import (
    JANITOR_HANDLER,
    PACKAGE,
    SCENARIOS,
    Stack,
    function_environment,
    template,
    transformed,
)

METRIC_NAMES = {v for k, v in vars(MetricName).items() if k.isupper()}
# Gauges are read with Maximum, counts with Sum.
GAUGES = {MetricName.PENDING_COUNT, MetricName.OLDEST_PENDING_AGE_SECONDS, MetricName.DEAD_COUNT}
# Alarms whose missing data breaches: no runs, no data.  Their actions follow the schedules.
RUN_ALARMS = {"LagAlarm", "NoSuccessfulRunAlarm", "AsyncEventsDroppedAlarm"}
JANITOR_ALARMS = {"JanitorNotSucceedingAlarm"}
TOPIC_ARN = "arn:aws:sns:eu-west-1:111111111111:pager"


def stack(**overrides: str) -> Stack:
    parameters = {**SCENARIOS["msk-iam"], **overrides}
    return Stack(transformed(parameters), parameters)


def alarms(deployed: Stack) -> dict[str, dict[str, Any]]:
    """Each alarm's properties, intrinsics resolved for this deployment."""
    return {
        name: deployed.resolve(resource["Properties"])
        for name, resource in deployed.template["Resources"].items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }


def emitted_names() -> set[str]:
    """MetricName attributes the function's code passes to an emit call (count, gauge)."""
    found = set()
    for path in (PACKAGE / "relay.py", PACKAGE / "handler.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            if (isinstance(function, ast.Attribute) and function.attr in ("count", "gauge")) or (
                isinstance(function, ast.Name) and function.id == "_failed"
            ):
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.Attribute)
                        and isinstance(inner.value, ast.Name)
                        and inner.value.id == "MetricName"
                    ):
                        found.add(getattr(MetricName, inner.attr))
    return found


def emf_directive(namespace: str, service: str) -> dict[str, Any]:
    """What Powertools writes for a gauge through the function's metrics adapter."""
    metrics = Metrics(namespace=namespace, service=service)
    try:
        EmfMetrics(metrics).gauge(MetricName.DEAD_COUNT, 3, "Count")
        blob: dict[str, Any] = json.loads(json.dumps(metrics.serialize_metric_set()))  # as printed
    finally:
        metrics.clear_metrics()
    return blob


def test_each_custom_alarm_watches_a_metric_the_functions_emit_where_they_emit_it() -> None:
    deployed = stack()
    envs = [function_environment(deployed), function_environment(deployed, JANITOR_HANDLER)]
    custom = {n: a for n, a in alarms(deployed).items() if not a["Namespace"].startswith("AWS/")}
    assert custom, "no alarm on the relay's own metrics"
    emitted = emitted_names()
    for name, alarm in custom.items():
        assert alarm["MetricName"] in METRIC_NAMES, f"{name}: {alarm['MetricName']} is not a MetricName"
        assert alarm["MetricName"] in emitted, f"{name}: nothing emits {alarm['MetricName']}"
        for env in envs:
            blob = emf_directive(env["POWERTOOLS_METRICS_NAMESPACE"], env["POWERTOOLS_SERVICE_NAME"])
            (directive,) = blob["_aws"]["CloudWatchMetrics"]
            assert alarm["Namespace"] == directive["Namespace"], name
            assert [[d["Name"] for d in alarm["Dimensions"]]] == directive["Dimensions"], name
            assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
                key: blob[key] for key in directive["Dimensions"][0]
            }, name
        expected = "Maximum" if alarm["MetricName"] in GAUGES else "Sum"
        assert alarm["Statistic"] == expected, name


def test_the_service_dimension_is_the_stack_name() -> None:
    deployed = stack()
    assert function_environment(deployed)["POWERTOOLS_SERVICE_NAME"] == deployed.name
    blob = emf_directive("OutboxRelay", deployed.name)
    assert blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert blob["service"] == deployed.name and blob[MetricName.DEAD_COUNT] == [3.0]


def test_each_aws_alarm_watches_the_relay_function_or_the_dead_letter_queue() -> None:
    deployed = stack()
    relay = deployed.ref("RelayFunction")
    queue = deployed.get_att("DeadLetterQueue", "QueueName")
    watched = {
        name: (a["Namespace"], a["MetricName"], {d["Name"]: d["Value"] for d in a["Dimensions"]})
        for name, a in alarms(deployed).items()
        if a["Namespace"].startswith("AWS/")
    }
    assert watched == {
        "FunctionErrorsAlarm": ("AWS/Lambda", "Errors", {"FunctionName": relay}),
        "AsyncEventsDroppedAlarm": ("AWS/Lambda", "AsyncEventsDropped", {"FunctionName": relay}),
        "DeadLetterQueueNotEmptyAlarm": (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            {"QueueName": queue},
        ),
        "ScheduleDeadLetterAlarm": (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            {"QueueName": deployed.get_att("ScheduleDeadLetterQueue", "QueueName")},
        ),
    }


def test_what_each_alarm_treats_missing_data_as() -> None:
    found = {name: a["TreatMissingData"] for name, a in alarms(stack()).items()}
    assert found == {
        # no data = no run measured it: the gauge is absent, never 0, when the lag is unknown
        "LagAlarm": "breaching",
        "NoSuccessfulRunAlarm": "breaching",
        "JanitorNotSucceedingAlarm": "breaching",
        # one datapoint per janitor tick: the state holds in between
        "DeadRowsAlarm": "ignore",
        "AsyncEventsDroppedAlarm": "notBreaching",
        "DeadLetteredAlarm": "notBreaching",
        # held-back rows are counted by runs; no run, no count (the lag alarm covers that)
        "TopicUnavailableAlarm": "notBreaching",
        "DeadLetterQueueNotEmptyAlarm": "notBreaching",
        "ScheduleDeadLetterAlarm": "notBreaching",
        "FunctionErrorsAlarm": "notBreaching",
    }


def test_the_janitor_alarm_waits_the_hours_asked_within_cloudwatchs_limit() -> None:
    alarm = alarms(stack(JanitorAlarmHours="3"))["JanitorNotSucceedingAlarm"]
    assert alarm["MetricName"] == MetricName.JANITOR_SUCCEEDED
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3600, "3", "3")
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)
    # CloudWatch: EvaluationPeriods x Period at most 7 days for hourly periods.
    assert int(template()["Parameters"]["JanitorAlarmHours"]["MaxValue"]) * 3600 <= 7 * 86400


def _actions(alarm: Mapping[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    return alarm.get("AlarmActions"), alarm.get("OKActions")


@pytest.mark.parametrize(
    ("overrides", "topic"),
    [
        ({}, None),
        ({"AlarmTopicArn": TOPIC_ARN}, TOPIC_ARN),
        ({"AlarmEmail": "oncall@example.com"}, "AlarmTopic"),
    ],
)
def test_every_alarm_notifies_the_one_topic_the_parameters_pick(
    overrides: dict[str, str], topic: str | None
) -> None:
    deployed = stack(**overrides)
    created = deployed.template["Resources"]["AlarmTopic"]
    assert deployed.condition(created["Condition"]) is (topic == "AlarmTopic")
    expected = deployed.ref("AlarmTopic") if topic == "AlarmTopic" else topic
    found = alarms(deployed)
    for name, alarm in found.items():
        alarm_actions, ok_actions = _actions(alarm)
        assert alarm_actions == ([expected] if expected else None), name
        assert ok_actions in (None, alarm_actions), name
    # State alarms say when they are over; the one-shot ones have no OK to tell.
    with_ok = {name for name, alarm in found.items() if "OKActions" in alarm}
    if expected:
        assert with_ok == RUN_ALARMS - {"AsyncEventsDroppedAlarm"} | JANITOR_ALARMS | {
            "DeadRowsAlarm",
            "TopicUnavailableAlarm",
        }
    if topic == "AlarmTopic":
        (subscription,) = deployed.resolve(created["Properties"]["Subscription"])
        assert subscription == {"Protocol": "email", "Endpoint": "oncall@example.com"}


def test_an_e_mail_and_a_topic_together_are_refused_before_deploying() -> None:
    rule = template()["Rules"]["OneAlarmDestination"]
    for overrides, refused in (
        ({"AlarmEmail": "oncall@example.com", "AlarmTopicArn": TOPIC_ARN}, True),
        ({"AlarmEmail": "oncall@example.com"}, False),
        ({"AlarmTopicArn": TOPIC_ARN}, False),
    ):
        deployed = stack(**overrides)
        applies = deployed.resolve(rule["RuleCondition"])
        holds = all(deployed.resolve(a["Assert"]) for a in rule["Assertions"])
        assert (applies and not holds) is refused, overrides


@pytest.mark.parametrize(
    ("overrides", "off"),
    [
        ({}, set()),
        ({"ScheduleState": "DISABLED"}, RUN_ALARMS | JANITOR_ALARMS),
        # Stopped relay: its run alarms go quiet; the janitor still runs and is still watched.
        ({"ReservedConcurrency": "0"}, RUN_ALARMS),
        ({"ReservedConcurrency": "-1"}, set()),
        ({"ReservedConcurrency": "2"}, set()),
    ],
)
def test_missing_runs_do_not_breach_while_runs_are_stopped_and_actions_stay_on(
    overrides: dict[str, str], off: set[str]
) -> None:
    # Actions stay on: an alarm left in ALARM with its actions off would not notify again (a state
    # is kept across updates) once the schedule comes back.  Missing data is what stops breaching.
    found = alarms(stack(**overrides))
    assert all(alarm.get("ActionsEnabled", True) is True for alarm in found.values())
    # AsyncEventsDropped never breaches on missing data (no drops is no data).
    watched = (RUN_ALARMS | JANITOR_ALARMS) - {"AsyncEventsDroppedAlarm"}
    breaching = {name for name in watched if found[name]["TreatMissingData"] == "breaching"}
    assert breaching == watched - off


NUMBER_WORDS = [
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]


def test_the_readme_counts_the_alarms_the_template_has() -> None:
    readme = (PACKAGE.parents[2] / "README.md").read_text()
    section = readme[readme.index("## Deploying on AWS") :]
    match = re.search(r"\b(\w+) alarms \(optionally an SNS topic", section)
    assert match, "README 'Deploying on AWS' no longer says how many alarms the template has"
    count = sum(1 for r in template()["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm")
    assert match[1] == NUMBER_WORDS[count], f"README says {match[1]} alarms, the template has {count}"
