"""The template's `Rules` refuse parameter sets the relay could never run with, before CloudFormation
creates anything, and accept every deployment this repository describes (the scenarios and
samconfig.toml's environments).  Rules are evaluated here with the few intrinsics they use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.unit.deploy_model import DEPLOYMENTS, SCENARIOS, template


def evaluate(node: Any, parameters: Mapping[str, str]) -> Any:
    """Fn::Equals / Not / And / Or and Ref over parameter values (defaults filled in)."""
    if isinstance(node, dict) and len(node) == 1:
        ((name, args),) = node.items()
        if name == "Ref":
            return parameters[args]
        values = [evaluate(a, parameters) for a in args] if isinstance(args, list) else args
        if name == "Fn::Equals":
            return str(values[0]) == str(values[1])
        if name == "Fn::Not":
            return not values[0]
        if name == "Fn::And":
            return all(values)
        if name == "Fn::Or":
            return any(values)
        raise AssertionError(f"the rule evaluator does not know {name}: teach it before using it")
    return node


def refusals(overrides: Mapping[str, str]) -> list[str]:
    """The AssertDescription of every rule assertion the parameter set breaks."""
    parsed = template()
    values = {k: str(v.get("Default", "")) for k, v in parsed["Parameters"].items()} | dict(overrides)
    broken = []
    for rule in parsed.get("Rules", {}).values():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], values):
            continue
        broken += [a["AssertDescription"] for a in rule["Assertions"] if not evaluate(a["Assert"], values)]
    return broken


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_deployment_of_this_repository_passes_the_rules(deployment: str) -> None:
    parameters, _region = DEPLOYMENTS[deployment]
    assert refusals(parameters) == []


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"KafkaSaslMechanism": "none"}, "needs a KafkaSaslMechanism"),  # still SASL_SSL
        ({"KafkaSaslMechanism": "SCRAM-SHA-512"}, "needs KafkaSaslSecretArn"),
        ({"KafkaSecurityProtocol": "SSL"}, "OAUTHBEARER (MSK IAM) needs KafkaSecurityProtocol=SASL_SSL"),
        ({"MskClusterArn": ""}, "OAUTHBEARER (MSK IAM) needs MskClusterArn"),
        ({"DbAuth": "iam", "DbSecretArn": ""}, "DbAuth=iam needs DbClusterResourceId"),
        ({"DbSecretArn": ""}, "DbAuth=secret needs DbSecretArn"),
        ({**SCENARIOS["scram"], "KafkaSaslSecretKmsKeyId": ""}, "needs KafkaSaslSecretKmsKeyId"),
        (
            {**SCENARIOS["scram"], "KafkaSecurityProtocol": "PLAINTEXT"},
            "SCRAM-SHA-512 needs KafkaSecurityProtocol",
        ),
    ],
)
def test_a_parameter_set_that_cannot_run_is_refused(changes: dict[str, str], refused: str) -> None:
    parameters = {**SCENARIOS["msk-iam"], **changes}
    assert any(refused in reason for reason in refusals(parameters)), refusals(parameters)
