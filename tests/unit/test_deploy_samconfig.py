"""samconfig.toml: every deploy env's parameter_overrides (split as SAM CLI splits them) names a template
parameter and satisfies its constraints, and supplies every parameter without a Default; the template's
Defaults satisfy their own constraints, and Number parameters admit only values load_config accepts."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from typing import Any

import pytest

from outbox_relay.config import ConfigError, load_config
from tests.unit.deploy_model import (
    ROOT,
    SCENARIOS,
    Stack,
    cfn_str,
    deploy_envs,
    function_environment,
    lambda_environment,
    no_problems,
    parse_overrides,
    relay_function,
    template,
    transformed,
)

SAM_PYTHON = ROOT / ".venv-sam" / "bin" / "python"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_value(name: str, spec: Mapping[str, Any], value: str) -> list[str]:
    """Does CloudFormation accept ``value`` for the parameter ``spec``?  (Format only: it also checks
    that AWS-specific types such as AWS::EC2::Subnet::Id exist in the account, which needs one.)"""
    kind = str(spec.get("Type", "String"))
    is_list = kind.startswith("List<") or kind == "CommaDelimitedList"
    numeric = kind in ("Number", "List<Number>")
    problems = []
    for item in value.split(",") if is_list else [value]:
        shown = f"{name}={item!r}" if not is_list else f"{name} item {item!r}"
        number = _number(item)
        if numeric and number is None:
            problems.append(f"{shown} is not a number ({kind})")
            continue
        if "AllowedValues" in spec:
            allowed = [cfn_str(a) for a in spec["AllowedValues"]]
            ok = (
                number in [_number(a) for a in allowed] if numeric and number is not None else item in allowed
            )
            if not ok:
                problems.append(f"{shown} is not one of AllowedValues {allowed}")
        if "AllowedPattern" in spec and not re.fullmatch(str(spec["AllowedPattern"]), item):
            # CloudFormation matches the pattern against the whole value.
            problems.append(f"{shown} does not match AllowedPattern {spec['AllowedPattern']!r}")
        if number is not None and numeric:
            if "MinValue" in spec and number < float(spec["MinValue"]):
                problems.append(f"{shown} is below MinValue {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                problems.append(f"{shown} is above MaxValue {spec['MaxValue']}")
        if "MinLength" in spec and len(item) < int(spec["MinLength"]):
            problems.append(f"{shown} is shorter than MinLength {spec['MinLength']}")
        if "MaxLength" in spec and len(item) > int(spec["MaxLength"]):
            problems.append(f"{shown} is longer than MaxLength {spec['MaxLength']}")
    return problems


def check_overrides(parameters: Mapping[str, Any], raw_overrides: object) -> list[str]:
    """Problems of one config env's parameter_overrides against the template's Parameters."""
    overrides, problems = parse_overrides(raw_overrides if raw_overrides is not None else "")
    for name, value in overrides.items():
        if name not in parameters:
            problems.append(f"{name} is not a template parameter")
        else:
            problems += check_value(name, parameters[name], value)
    for name, spec in parameters.items():
        if "Default" not in spec and name not in overrides:
            problems.append(f"{name} has no Default and is not supplied (deploy would prompt or fail)")
    return problems


@pytest.mark.parametrize("env", sorted(deploy_envs()))
def test_samconfig_overrides_are_template_parameters_with_acceptable_values(env: str) -> None:
    deploy = deploy_envs()[env]
    no_problems(check_overrides(template()["Parameters"], deploy.get("parameter_overrides")))


def test_samconfig_has_deploy_envs_to_check() -> None:
    assert {"default", "prod"} <= set(deploy_envs())


def test_template_defaults_satisfy_their_own_constraints() -> None:
    parameters = template()["Parameters"]
    problems = [
        p
        for name, spec in parameters.items()
        if "Default" in spec
        for p in check_value(name, spec, cfn_str(spec["Default"]))
    ]
    no_problems(problems)


def test_override_checker_reports_bad_input() -> None:
    parameters = template()["Parameters"]
    required = {name: f"x-{name}" for name, spec in parameters.items() if "Default" not in spec}
    required |= {
        "DbSecretArn": "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdEf",
        "MskClusterArn": "arn:aws:kafka:eu-west-1:1:cluster/c/u",
    }
    good = " ".join(f'{k}="{v}"' for k, v in required.items())
    assert check_overrides(parameters, good) == []
    assert check_overrides(parameters, [good, "ScheduleState=DISABLED"]) == []

    def problems(extra: str) -> list[str]:
        return check_overrides(parameters, f"{good} {extra}")

    assert problems("ScheduleState=PAUSED") == [
        "ScheduleState='PAUSED' is not one of AllowedValues ['ENABLED', 'DISABLED']"
    ]
    assert problems("NoSuchParameter=1") == ["NoSuchParameter is not a template parameter"]
    assert problems("OutboxTable=bad-name") == [
        "OutboxTable='bad-name' does not match AllowedPattern '[A-Za-z_][A-Za-z0-9_]{0,47}'"
    ]
    # The whole value must match, not a prefix.
    arn = "arn:aws:secretsmanager:eu-west-1:111111111111:secret:db-AbCdEf"
    assert problems(f"DbSecretArn=x{arn}") == [
        f"DbSecretArn='x{arn}' does not match AllowedPattern {parameters['DbSecretArn']['AllowedPattern']!r}"
    ]
    assert problems("FunctionTimeoutSeconds=901") == ["FunctionTimeoutSeconds='901' is above MaxValue 900"]
    assert problems("MemorySize=64") == ["MemorySize='64' is below MinValue 128"]
    assert problems("BatchSize=lots") == ["BatchSize='lots' is not a number (Number)"]
    assert problems("LogRetentionDays=14") == []
    assert problems("LogRetentionDays=2") == [
        "LogRetentionDays='2' is not one of AllowedValues ['1', '3', '5', '7', '14', '30', '60', '90', "
        "'120', '150', '180', '365', '400', '545', '731', '1096', '1827', '3653']"
    ]
    assert problems("Oops") == ["'Oops' is not Name=Value (SAM CLI would silently drop it)"]
    assert check_overrides(parameters, good.replace('DbHost="x-DbHost"', "")) == [
        "DbHost has no Default and is not supplied (deploy would prompt or fail)"
    ]
    assert check_value("L", {"Type": "List<Number>", "MaxValue": 5}, "1,9") == [
        "L item '9' is above MaxValue 5"
    ]
    assert check_value("S", {"Type": "String", "MaxLength": 2}, "abc") == [
        "S='abc' is longer than MaxLength 2"
    ]


# SQS keeps a message at most 14 days (MessageRetentionPeriod 60..1209600 s).
SQS_MAX_RETENTION_SECONDS = 1_209_600


def test_dead_rows_outlive_their_dead_letters_whatever_the_parameters() -> None:
    """`outbox-relay redrive --from-dlq` reads a dead letter, then needs its DEAD row: a row must
    stay (DeadRetentionSeconds, the janitor) at least as long as its message (DeadLetterRetentionSeconds,
    the queue).  CloudFormation Rules cannot compare numbers, so the parameters' bounds make every
    accepted pair consistent; and every deployment's values are checked against those bounds above."""
    parameters = template()["Parameters"]
    dead_rows, dead_letters = parameters["DeadRetentionSeconds"], parameters["DeadLetterRetentionSeconds"]
    assert float(dead_letters["MaxValue"]) <= SQS_MAX_RETENTION_SECONDS
    assert float(dead_rows["MinValue"]) >= float(dead_letters["MaxValue"])
    # The two parameters are the ones that set the two retentions.
    stack = Stack(transformed(SCENARIOS["msk-iam"]), SCENARIOS["msk-iam"])
    queue = stack.template["Resources"]["DeadLetterQueue"]
    assert queue["Properties"]["MessageRetentionPeriod"] == {"Ref": "DeadLetterRetentionSeconds"}
    variables = relay_function(stack.template)["Environment"]["Variables"]
    assert variables["OUTBOX_DEAD_RETENTION_SECONDS"] == {"Ref": "DeadRetentionSeconds"}
    for env, deploy in deploy_envs().items():
        overrides, _ = parse_overrides(deploy.get("parameter_overrides", ""))
        values = Stack(stack.template, overrides).parameters
        assert int(values["DeadRetentionSeconds"]) >= int(values["DeadLetterRetentionSeconds"]), env
    # A shorter DEAD retention is refused before anything is deployed.
    assert check_value("DeadRetentionSeconds", dead_rows, "86400") == [
        "DeadRetentionSeconds='86400' is below MinValue 1209600"
    ]


SAM_PARSER = """
import json, sys
from samcli.cli.types import CfnParameterOverridesType
from samcli.lib.config.samconfig import SamConfig
request = json.load(sys.stdin)
parse = CfnParameterOverridesType().convert
config = SamConfig(request["dir"], "samconfig.toml")
envs = {}
for env in config.get_stage_configuration_names():
    deploy = config.get_all(["deploy"], "parameters", env=env)
    if "parameter_overrides" in deploy:
        envs[env] = parse(deploy["parameter_overrides"], None, None)
print(json.dumps({"envs": envs, "corpus": [parse(text, None, None) for text in request["corpus"]]}))
"""
PARSER_CORPUS = [
    "A=1 B=two",
    'SubnetIds="subnet-1,subnet-2" Name=x',
    "Q='single quoted, with space' R=plain",
    'Inner="has \\"quotes\\" inside"',
    "ParameterKey=K,ParameterValue=v ParameterKey=L,ParameterValue=w",
    "Url=https://x.example/a?b=c&d=e Empty=''",
    "Arn=arn:aws:kafka:eu-west-1:1:cluster/c/u-1 Pattern=outbox.event.*",
]


def test_override_parser_agrees_with_sam_cli() -> None:
    if not SAM_PYTHON.exists():
        pytest.skip("the pinned SAM CLI is not installed (make sam-cli)")
    result = subprocess.run(
        [str(SAM_PYTHON), "-c", SAM_PARSER],
        input=json.dumps({"dir": str(ROOT), "corpus": PARSER_CORPUS}),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sam = json.loads(result.stdout)
    ours = {env: parse_overrides(d.get("parameter_overrides"))[0] for env, d in deploy_envs().items()}
    assert ours == sam["envs"]
    assert [parse_overrides(text)[0] for text in PARSER_CORPUS] == sam["corpus"]


def test_number_parameters_admit_only_values_the_relay_accepts() -> None:
    """A Number parameter that feeds a variable must not let CloudFormation accept a value the
    relay then rejects on every run: each bound of the parameter (a missing one stands in as
    +-10**12) must pass load_config."""
    stack = Stack(transformed(SCENARIOS["msk-iam"]), SCENARIOS["msk-iam"])
    # TLS off: the CA path (/opt/...) is test_lambda_package.py's business, not this test's.
    base = lambda_environment(
        {**function_environment(stack), "OUTBOX_DB_TLS": "off", "OUTBOX_DB_SSL_CA": ""}, stack.region
    )
    variables = relay_function(stack.template)["Environment"]["Variables"]
    problems = []
    for variable, value in variables.items():
        parameter = value.get("Ref") if isinstance(value, dict) else None
        spec = template()["Parameters"].get(parameter or "", {})
        if spec.get("Type") != "Number":
            continue
        candidates = (
            [cfn_str(v) for v in spec["AllowedValues"]]
            if "AllowedValues" in spec
            else [cfn_str(spec.get("MinValue", -(10**12))), cfn_str(spec.get("MaxValue", 10**12))]
        )
        for candidate in candidates:
            try:
                load_config({**base, variable: candidate})
            except ConfigError as exc:
                reasons = str(exc).split(": ", 1)[1].split("; ")
                mine = [p for p in reasons if re.search(rf"\b{variable}\b", p)]
                if mine:
                    problems.append(f"{parameter}={candidate} passes the template but: {'; '.join(mine)}")
    no_problems(problems)
