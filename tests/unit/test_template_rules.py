"""The template's `Rules` refuse parameter sets the relay could never run with, before CloudFormation
creates anything, and accept every deployment this repository describes (the scenarios and
samconfig.toml's environments).  Rules are evaluated here with the few intrinsics they use."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from tests.unit.deploy_model import DB_SECRET_KMS_KEY_ID, DEPLOYMENTS, SCENARIOS, template


def evaluate(node: Any, parameters: Mapping[str, str]) -> Any:
    """Fn::Equals / Not / And / Or / Contains and Ref over parameter values (defaults filled in)."""
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
        if name == "Fn::Contains":  # a list of strings, and a string
            return str(values[1]) in [str(v) for v in values[0]]
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
            {**SCENARIOS["aurora-iam"], "DbSecretKmsKeyId": DB_SECRET_KMS_KEY_ID},
            "DbAuth=iam takes no DbSecretKmsKeyId",
        ),
        (
            {**SCENARIOS["scram"], "KafkaSecurityProtocol": "PLAINTEXT"},
            "SCRAM-SHA-512 needs KafkaSecurityProtocol",
        ),
    ],
)
def test_a_parameter_set_that_cannot_run_is_refused(changes: dict[str, str], refused: str) -> None:
    parameters = {**SCENARIOS["msk-iam"], **changes}
    assert any(refused in reason for reason in refusals(parameters)), refusals(parameters)


def test_a_db_secret_key_without_a_db_secret_is_the_only_refusal() -> None:
    """DbAuth=iam with DbSecretKmsKeyId: a key for a secret the stack does not read. The same key
    with DbAuth=secret (db-secret-cmk) passes."""
    parameters = {**SCENARIOS["aurora-iam"], "DbSecretKmsKeyId": DB_SECRET_KMS_KEY_ID}
    assert refusals(parameters) == [
        "DbAuth=iam takes no DbSecretKmsKeyId (there is no database secret to decrypt)."
    ]
    assert refusals(SCENARIOS["db-secret-cmk"]) == []


@pytest.mark.parametrize(
    ("parameter", "accepted", "refused"),
    [
        (
            "DbSecretKmsKeyId",
            ["", "1234abcd-12ab-34cd-56ef-1234567890ab", "mrk-0123456789abcdef0123456789abcdef"],
            ["alias/db", "arn:aws:kms:eu-west-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"],
        ),
        (
            "KafkaSaslSecretKmsKeyId",
            ["", "1234abcd-12ab-34cd-56ef-1234567890ab"],
            ["alias/msk", "arn:aws:kms:eu-west-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"],
        ),
        (
            # A full ARN: the GetSecretValue grant and the encryption context name the secret by it.
            "KafkaSaslSecretArn",
            ["", "arn:aws:secretsmanager:eu-west-1:111111111111:secret:AmazonMSK_relay-AbCdEf"],
            ["AmazonMSK_relay"],
        ),
    ],
)
def test_parameters_refuse_values_their_grants_cannot_use(
    parameter: str, accepted: list[str], refused: list[str]
) -> None:
    """CloudFormation matches AllowedPattern against the whole value: a key id (the grants build
    the key's ARN from it, in the stack's account and region), not an alias or an ARN."""
    pattern = template()["Parameters"][parameter]["AllowedPattern"]
    assert [v for v in accepted if not re.fullmatch(pattern, v)] == []
    assert [v for v in refused if re.fullmatch(pattern, v)] == []
