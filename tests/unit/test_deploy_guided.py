"""A guided deploy explains itself, and every value the template accepts deploys (issue 17, item 3):
each parameter is described and grouped; values CloudFormation or a service would refuse half-way
(an alarm window over a day, a function name over 64 characters, a partial secret ARN) are refused
before anything is created; samconfig's envs name their region for every command; dead letters
outlive the stack; the schedules have a dead-letter queue, an alarm on it, and roles only this
account's EventBridge Scheduler can assume."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tests.unit.deploy_model import SCENARIOS, Stack, no_problems, samconfig, template, transformed
from tests.unit.test_deploy_samconfig import check_value

GROUPS = ("network", "database", "kafka", "schedule", "alarms", "advanced")
# CloudFormation's longest stack name, and the name limits of what the stack names.
LONGEST_STACK_NAME = "s" * 128
NAME_LIMITS = {
    ("AWS::Lambda::Function", "FunctionName"): 64,
    ("AWS::Lambda::LayerVersion", "LayerName"): 140,
    ("AWS::Logs::LogGroup", "LogGroupName"): 512,
    ("AWS::CloudWatch::Dashboard", "DashboardName"): 255,
    ("AWS::IAM::Role", "RoleName"): 64,
    ("AWS::SQS::Queue", "QueueName"): 80,
    ("AWS::Scheduler::Schedule", "Name"): 64,
    ("AWS::CloudWatch::Alarm", "AlarmName"): 255,
    ("AWS::SNS::Topic", "TopicName"): 256,
    ("AWS::EC2::SecurityGroup", "GroupName"): 255,
}


def deployed(**overrides: str) -> Stack:
    parameters = {**SCENARIOS["msk-iam"], **overrides}
    return Stack(transformed(parameters), parameters)


def test_every_parameter_has_a_description() -> None:
    parameters = template()["Parameters"]
    no_problems(
        [f"{name} has no Description" for name, spec in parameters.items() if not spec.get("Description")]
    )


def test_the_interface_groups_every_parameter_once_with_labels() -> None:
    interface = template()["Metadata"]["AWS::CloudFormation::Interface"]
    parameters = set(template()["Parameters"])
    grouped: list[str] = [p for g in interface["ParameterGroups"] for p in g["Parameters"]]
    labels = [g["Label"]["default"] for g in interface["ParameterGroups"]]
    assert sorted(grouped) == sorted(parameters), "each parameter in exactly one group"
    assert len(grouped) == len(set(grouped))
    assert [label.split()[0].lower() for label in labels] == list(GROUPS)
    assert set(interface["ParameterLabels"]) == parameters
    assert all(label["default"] for label in interface["ParameterLabels"].values())


def test_no_success_alarm_minutes_stay_within_cloudwatchs_evaluation_range() -> None:
    """One-minute periods: Period x EvaluationPeriods at most one day (PutMetricAlarm), or the deploy
    fails at the alarm, after the functions were created."""
    spec = template()["Parameters"]["NoSuccessAlarmMinutes"]
    assert check_value("NoSuccessAlarmMinutes", spec, "1441") != []
    assert check_value("NoSuccessAlarmMinutes", spec, "1440") == []
    alarm = deployed(NoSuccessAlarmMinutes="1440").template["Resources"]["NoSuccessfulRunAlarm"]["Properties"]
    assert alarm["Period"] == 60
    accepted = [int(v) for v in spec.get("AllowedValues", [])] or [int(spec["MaxValue"])]
    assert max(accepted) * 60 <= 86400


def _names(stack: Stack) -> list[str]:
    problems = []
    for logical, resource in stack.template["Resources"].items():
        for (kind, key), limit in NAME_LIMITS.items():
            if resource["Type"] == kind and key in resource.get("Properties", {}):
                name = str(stack.resolve(resource["Properties"][key]))
                if len(name) > limit:
                    problems.append(f"{logical}.{key} is {len(name)} characters (at most {limit})")
    return problems


def test_the_longest_stack_name_deploys() -> None:
    """A name derived from the stack's would fail that resource's creation half-way (the janitor's
    function name did with stack names over 56 characters)."""
    parameters = SCENARIOS["msk-iam"]
    stack = Stack(transformed(parameters), parameters, name=LONGEST_STACK_NAME)
    no_problems(_names(stack))
    assert all(
        "FunctionName" not in r["Properties"]
        for r in stack.template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
    ), "CloudFormation names the functions (the outputs RelayFunctionName and JanitorFunctionName say how)"


def test_secret_arns_must_be_full() -> None:
    """A partial ARN (no -XXXXXX suffix) deploys, and the grant, which names the secret's ARN, then
    denies every GetSecretValue."""
    for parameter in ("DbSecretArn", "KafkaSaslSecretArn"):
        spec = template()["Parameters"][parameter]
        for value in (
            "",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdEf",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:app/prod/relay-db-a1B2c3",
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:111111111111:secret:AmazonMSK_relay-AbCdEf",
        ):
            assert check_value(parameter, spec, value) == [], (parameter, value)
        for value in (
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:app/prod/relay-db",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdE",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:*",
            "db-AbCdEf",
        ):
            assert check_value(parameter, spec, value) != [], (parameter, value)


def test_each_samconfig_env_names_its_region_for_every_command() -> None:
    """`sam list stack-outputs --config-env prod` (and sam logs, sam delete) read the global section,
    not the deploy one."""
    for env, section in samconfig().items():
        if isinstance(section, dict) and "deploy" in section:
            region = section.get("global", {}).get("parameters", {}).get("region")
            assert region and re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]", region), env


def test_dead_letters_outlive_the_stack() -> None:
    queue = deployed().template["Resources"]["DeadLetterQueue"]
    assert (queue.get("DeletionPolicy"), queue.get("UpdateReplacePolicy")) == ("Retain", "Retain")


def _statements(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = document["Statement"]
    return [statements] if isinstance(statements, dict) else list(statements)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_the_schedules_have_a_dead_letter_queue_an_alarm_on_it_and_account_bound_roles() -> None:
    stack = deployed(AlarmTopicArn="arn:aws:sns:eu-west-1:111111111111:pager")
    resources = stack.template["Resources"]
    schedules = {n: r for n, r in resources.items() if r["Type"] == "AWS::Scheduler::Schedule"}
    assert len(schedules) == 2
    alarms = [
        stack.resolve(r["Properties"]) for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"
    ]
    for name, schedule in schedules.items():
        target = schedule["Properties"]["Target"]
        queue = target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
        assert resources[queue]["Type"] == "AWS::SQS::Queue", name
        watching = [
            a
            for a in alarms
            if a["Namespace"] == "AWS/SQS"
            and a["MetricName"] == "ApproximateNumberOfMessagesVisible"
            and a["Dimensions"] == [{"Name": "QueueName", "Value": stack.get_att(queue, "QueueName")}]
        ]
        assert len(watching) == 1 and watching[0]["AlarmActions"], f"{name}: no alarm on {queue}"
        role_name = target["RoleArn"]["Fn::GetAtt"][0]
        role = stack.resolve(resources[role_name]["Properties"])
        (trust,) = _statements(role["AssumeRolePolicyDocument"])
        assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
        assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": stack.account}}, role_name
        granted = {
            (action, str(resource))
            for policy in role["Policies"]
            for s in _statements(policy["PolicyDocument"])
            for action in _as_list(s["Action"])
            for resource in _as_list(s["Resource"])
        }
        function = target["Arn"]["Fn::GetAtt"][0]
        assert ("sqs:SendMessage", str(stack.get_att(queue, "Arn"))) in granted, role_name
        assert {a for a, _ in granted} == {"sqs:SendMessage", "lambda:InvokeFunction"}, role_name
        invoked = {r for a, r in granted if a == "lambda:InvokeFunction"}
        assert invoked == {stack.get_att(function, "Arn")}, role_name
