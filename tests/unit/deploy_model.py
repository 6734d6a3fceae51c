"""Shared model for the deploy checks (test_deploy_samconfig, _environment, _iam; issue 9, item 4):
template.yaml transformed and resolved as a stack deploys it, samconfig.toml's deploy envs and their
parameter_overrides, and the environment variables the relay's code reads (a static scan)."""

from __future__ import annotations

import ast
import functools
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

from tests.unit.test_template import PARAMETERS, _ManagedPolicies

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "functions" / "relay" / "outbox_relay"
HANDLER = "outbox_relay.handler.lambda_handler"
JANITOR_HANDLER = "outbox_relay.handler.janitor_handler"  # JanitorFunction's entry point
REGION, ACCOUNT = "eu-west-1", "111111111111"
# The SCRAM secret's customer managed KMS key (MSK refuses SCRAM secrets under the default key).
SCRAM_KMS_KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
# A database secret on a customer managed key (optional: the default is aws/secretsmanager).
DB_SECRET_KMS_KEY_ID = "mrk-0123456789abcdef0123456789abcdef"
SCRAM_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:AmazonMSK_relay-AbCdEf"
_SCRAM = {
    "KafkaSaslMechanism": "SCRAM-SHA-512",
    "KafkaSaslSecretArn": SCRAM_SECRET_ARN,
    "KafkaSaslSecretKmsKeyId": SCRAM_KMS_KEY_ID,
    "KafkaBootstrapServers": "b-1.x.kafka.eu-west-1.amazonaws.com:9096",
}

# Deployments checked besides samconfig.toml's: one per Kafka authentication, per database
# authentication, and with the database secret on a customer managed key (alone, and with SCRAM
# on the same key: each secret's grant must stay its own).
SCENARIOS: dict[str, dict[str, str]] = {
    "msk-iam": dict(PARAMETERS),
    "scram": {**PARAMETERS, **_SCRAM},
    "db-secret-cmk": {**PARAMETERS, "DbSecretKmsKeyId": DB_SECRET_KMS_KEY_ID},
    "scram-db-secret-same-cmk": {**PARAMETERS, **_SCRAM, "DbSecretKmsKeyId": SCRAM_KMS_KEY_ID},
    "aurora-iam": {
        **PARAMETERS,
        "DbAuth": "iam",
        "DbSecretArn": "",
        "DbClusterResourceId": "cluster-ABCDEFGHIJKLMNOPQRSTUVWXY0",
    },
    "tls-only": {
        **PARAMETERS,
        "KafkaSaslMechanism": "none",
        "KafkaSecurityProtocol": "SSL",
        "KafkaBootstrapServers": "b-1.x.kafka.eu-west-1.amazonaws.com:9094",
    },
}


def no_problems(problems: Sequence[str]) -> None:
    """Assert an empty problem list, showing each problem on its own line."""
    assert not problems, "\n" + "\n".join(problems)


# --- the template and its intrinsics ---------------------------------------------------------------


def template() -> dict[str, Any]:
    """template.yaml with short-form intrinsics (!Ref, !If ...) as their long form."""
    parsed: dict[str, Any] = yaml_parse((ROOT / "template.yaml").read_text())
    return parsed


@functools.lru_cache(maxsize=16)
def _transformed(parameters: frozenset[tuple[str, str]]) -> dict[str, Any]:
    source = template()
    for resource in source["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = f"s3://artifacts/{key.lower()}.zip"
    result: dict[str, Any] = transform(source, dict(parameters), _ManagedPolicies())
    return result


def transformed(parameters: Mapping[str, str]) -> dict[str, Any]:
    return _transformed(frozenset(parameters.items()))


def cfn_str(value: object) -> str:
    """A template value as CloudFormation passes it on (parameters and variables are strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _NoValue:
    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


@dataclass(frozen=True)
class Stack:
    """A deployment of a (transformed) template: resolves intrinsics with the parameter values,
    pseudo parameters and made-up physical ids of the stack's own resources."""

    template: Mapping[str, Any]
    overrides: Mapping[str, str]
    name: str = "outbox-relay-test"
    region: str = REGION
    account: str = ACCOUNT

    @functools.cached_property
    def parameters(self) -> dict[str, str]:
        defaults = {
            name: cfn_str(spec["Default"])
            for name, spec in self.template.get("Parameters", {}).items()
            if "Default" in spec
        }
        return {**defaults, **self.overrides}

    def condition(self, name: str) -> bool:
        value = self.resolve(self.template["Conditions"][name])
        assert isinstance(value, bool), f"condition {name} is not a boolean: {value!r}"
        return value

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if isinstance(node, dict):
            if len(node) == 1:
                ((key, arg),) = node.items()
                if key == "Ref" or key.startswith("Fn::") or (key == "Condition" and isinstance(arg, str)):
                    return self._intrinsic(key, arg)
            resolved = {k: self.resolve(v) for k, v in node.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        return node

    def _intrinsic(self, key: str, arg: Any) -> Any:
        if key == "Ref":
            return self.ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::GetAtt":
            logical, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
            return self.get_att(logical, attribute)
        if key == "Fn::If":
            name, yes, no = arg
            return self.resolve(yes if self.condition(name) else no)
        if key == "Fn::Equals":
            left, right = (cfn_str(self.resolve(x)) for x in arg)
            return left == right
        if key == "Fn::Not":
            (inner,) = arg
            return not self.resolve(inner)
        if key == "Fn::And":
            return all(self.resolve(x) for x in arg)
        if key == "Fn::Or":
            return any(self.resolve(x) for x in arg)
        if key == "Fn::Join":
            separator, items = arg
            return separator.join(cfn_str(x) for x in self.resolve(items))
        if key == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if key == "Fn::Split":
            separator, text = arg
            return cfn_str(self.resolve(text)).split(separator)
        if key == "Fn::FindInMap":
            mapping, top, second = (cfn_str(self.resolve(x)) for x in arg)
            return self.template["Mappings"][mapping][top][second]
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else arg
            values = {k: self.resolve(v) for k, v in variables.items()}
            return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub(m.group(1), values), text)
        raise NotImplementedError(f"intrinsic {key} is not modelled by this test")

    def _sub(self, name: str, values: Mapping[str, Any]) -> str:
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in values:
            return cfn_str(values[name])
        if "." in name and name.split(".", 1)[0] in self.template["Resources"]:
            logical, attribute = name.split(".", 1)
            return cfn_str(self.get_att(logical, attribute))
        return cfn_str(self.ref(name))

    def ref(self, name: str) -> Any:
        pseudo: dict[str, Any] = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.name,
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        resource = self.template["Resources"][name]
        if resource["Type"] == "AWS::SQS::Queue":
            return self.get_att(name, "QueueUrl")
        return f"{self.name}-{name}-1A2B3C4D5E6F"

    def get_att(self, logical: str, attribute: str) -> str:
        kind = self.template["Resources"][logical]["Type"]
        if kind == "AWS::SQS::Queue":
            queue = f"{self.name}-{logical}-1A2B3C4D5E6F"
            return {
                "QueueName": queue,
                "Arn": f"arn:aws:sqs:{self.region}:{self.account}:{queue}",
                "QueueUrl": f"https://sqs.{self.region}.amazonaws.com/{self.account}/{queue}",
            }[attribute]
        if kind == "AWS::Lambda::Function" and attribute == "Arn":
            return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.ref(logical)}"
        raise NotImplementedError(f"Fn::GetAtt {logical}.{attribute} ({kind}) is not modelled by this test")


def relay_function(stack_template: Mapping[str, Any], handler: str = HANDLER) -> dict[str, Any]:
    """The properties of the one function with ``handler`` (the relay's, or JANITOR_HANDLER)."""
    (function,) = (
        r
        for r in stack_template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler
    )
    return dict(function["Properties"])


def declared_variables(stack_template: Mapping[str, Any], handler: str = HANDLER) -> set[str]:
    return set(relay_function(stack_template, handler).get("Environment", {}).get("Variables", {}))


def function_environment(stack: Stack, handler: str = HANDLER) -> dict[str, str]:
    """The function's environment as deployed: variables whose value is AWS::NoValue are absent."""
    properties = relay_function(stack.template, handler)
    variables = stack.resolve(properties.get("Environment", {}).get("Variables", {}))
    return {name: cfn_str(value) for name, value in variables.items()}


# --- samconfig.toml -------------------------------------------------------------------------------


def samconfig() -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


def deploy_envs() -> dict[str, dict[str, Any]]:
    """Each config env ([default], [prod], ...) with a deploy section: its deploy parameters."""
    return {
        env: dict(section["deploy"].get("parameters", {}))
        for env, section in samconfig().items()
        if isinstance(section, dict) and "deploy" in section
    }


def parse_overrides(raw: object) -> tuple[dict[str, str], list[str]]:
    """``parameter_overrides`` split the way SAM CLI splits it (samcli.cli.types.
    CfnParameterOverridesType): space-separated ``Name=Value`` (or ``ParameterKey=Name,
    ParameterValue=Value``) tokens; a value in double or single quotes keeps its spaces and commas;
    a backslash escapes the next character.  A TOML array of such strings counts as one.  This is
    POSIX shell splitting (shlex); test_override_parser_agrees_with_sam_cli compares it with SAM
    CLI's own parser.  Unlike SAM CLI, which skips whatever its pattern does not match, a token that
    is not ``Name=Value`` is reported here."""
    overrides: dict[str, str] = {}
    problems: list[str] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not isinstance(item, str):
            problems.append(f"{item!r}: parameter_overrides entries must be strings")
            continue
        try:
            tokens = shlex.split(item, comments=False, posix=True)
        except ValueError as exc:
            problems.append(f"{item!r}: {exc}")
            continue
        for token in tokens:
            long_form = re.fullmatch(r"ParameterKey=([^,]*),ParameterValue=(.*)", token, re.DOTALL)
            name, sep, value = (long_form[1], "=", long_form[2]) if long_form else token.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z0-9]+", name):
                problems.append(f"{token!r} is not Name=Value (SAM CLI would silently drop it)")
                continue
            overrides[name] = value
    return overrides, problems


# --- the environment variables the code reads ----------------------------------------------------

READER_METHODS = frozenset({"text", "number", "flag", "choice"})
VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]+")


def _is_environ(node: ast.expr) -> bool:
    """``os.environ``, ``env``, ``environ``, ``<x>.env``: a mapping of environment variables."""
    if isinstance(node, ast.Name):
        return node.id in ("env", "environ")
    return isinstance(node, ast.Attribute) and node.attr in ("env", "environ")


def _inside(tree: ast.AST, class_name: str) -> set[ast.AST]:
    return {
        inner
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == class_name
        for inner in ast.walk(node)
    }


def scan_env_reads(sources: Mapping[str, str]) -> tuple[dict[str, set[str]], list[str]]:
    """Environment variables read by the code: the first argument of ``r.text/number/flag/choice``
    (config's _Reader), ``os.environ.get``/``env.get``/``os.getenv``, ``os.environ[...]`` and
    ``... in os.environ``.  Returns {name: modules} and the reads whose name is not a literal
    (which a static scan cannot follow; _Reader's own methods excepted)."""
    names: dict[str, set[str]] = {}
    dynamic: list[str] = []
    for module, source in sources.items():
        tree = ast.parse(source)
        reader_internals = _inside(tree, "_Reader")
        for node in ast.walk(tree):
            key: ast.expr | None = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                method, receiver = node.func.attr, node.func.value
                first = node.args[0]
                literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
                if (
                    (
                        method in READER_METHODS
                        and isinstance(receiver, ast.Name)
                        and (literal or receiver.id == "r")
                    )
                    or (method == "get" and _is_environ(receiver))
                    or (method == "getenv" and isinstance(receiver, ast.Name) and receiver.id == "os")
                ):
                    key = first
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                key = node.slice
            elif (
                isinstance(node, ast.Compare)
                and any(isinstance(o, ast.In | ast.NotIn) for o in node.ops)
                and any(_is_environ(c) for c in node.comparators)
            ):
                key = node.left
            if key is None:
                continue
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                if VARIABLE_NAME.fullmatch(key.value):
                    names.setdefault(key.value, set()).add(module)
            elif node not in reader_internals:
                dynamic.append(f"{module}:{key.lineno}: {ast.unparse(node)}")
    return names, dynamic


def code_reads() -> dict[str, set[str]]:
    names, dynamic = scan_env_reads({p.name: p.read_text() for p in sorted(PACKAGE.glob("*.py"))})
    no_problems([f"a read the scan cannot follow: {d}" for d in dynamic])
    return names


def lambda_environment(env: Mapping[str, str], region: str) -> dict[str, str]:
    """What the function sees: its variables plus the ones Lambda sets."""
    return {**env, "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_LAMBDA_FUNCTION_NAME": "relay"}


def env_region(env: str) -> str | None:
    """The env's region as SAM CLI reads it: the command's section, else the global one."""
    config = samconfig()[env]
    for section in ("deploy", "global"):
        region = config.get(section, {}).get("parameters", {}).get("region")
        if region:
            return str(region)
    return None


def deployments() -> Iterator[tuple[str, Mapping[str, str], str]]:
    """(name, parameter values, region): the synthetic scenarios and samconfig.toml's envs."""
    for name, parameters in SCENARIOS.items():
        yield name, parameters, REGION
    for env, deploy in deploy_envs().items():
        overrides, _ = parse_overrides(deploy.get("parameter_overrides", ""))
        yield f"samconfig:{env}", overrides, env_region(env) or REGION


DEPLOYMENTS = {name: (parameters, region) for name, parameters, region in deployments()}
