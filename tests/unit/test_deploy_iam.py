"""IAM: every AWS API the function's code calls is allowed by the transformed template's role, on the
right resource, and nothing more; the checker has a self-test feeding it bad input."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.resources
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import kafka
import pytest

from outbox_relay.config import load_config
from outbox_relay.publisher_kafka import producer_config
from tests.unit.deploy_model import (
    ACCOUNT,
    DB_SECRET_KMS_KEY_ID,
    DEPLOYMENTS,
    HANDLER,
    JANITOR_HANDLER,
    PACKAGE,
    REGION,
    SCENARIOS,
    SCRAM_KMS_KEY_ID,
    SCRAM_SECRET_ARN,
    Stack,
    cfn_str,
    code_reads,
    function_environment,
    lambda_environment,
    no_problems,
    relay_function,
    transformed,
)


@functools.cache
def iam_catalog() -> dict[str, frozenset[str]]:
    """service prefix -> its IAM actions (lower case), from cfn-lint's copy of the AWS catalog."""
    text = importlib.resources.files("cfnlint.data.AdditionalSpecs").joinpath("Policies.json").read_text()
    return {service: frozenset(spec["Actions"]) for service, spec in json.loads(text).items()}


def expand_action(pattern: str) -> frozenset[str]:
    """The IAM actions a (possibly wildcarded) Action names, as ``service:action`` in lower case."""
    service, _, action = pattern.lower().partition(":")
    return frozenset(f"{service}:{a}" for a in iam_catalog().get(service, ()) if iam_match(action, a))


def iam_match(pattern: str, value: str, *, case_sensitive: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


# AWS-managed policies the function's role may carry: what they grant (on "*") and why the role
# has them.  Not "needed by the code", so outside the "nothing more" comparison.
AWS_MANAGED: dict[str, tuple[frozenset[str], str]] = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": (
        frozenset({"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}),
        "Lambda writes the function's output (Powertools logs and EMF metrics) to CloudWatch Logs",
    ),
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole": (
        frozenset(
            {
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
            }
        ),
        "VpcConfig: Lambda attaches the function's network interfaces in the private subnets",
    ),
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": (
        frozenset(
            {
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
                "xray:GetSamplingRules",
                "xray:GetSamplingTargets",
                "xray:GetSamplingStatisticSummaries",
            }
        ),
        "Tracing: Active; Powertools' Tracer (X-Ray SDK) sends segments through the X-Ray daemon",
    ),
}

# Names from AWS libraries that the function uses, and the AWS API calls each stands for.
AWS_ENTRY_POINTS = {
    "boto3.client": "a service client (its operations are traced below)",
    "aws_lambda_powertools.utilities.parameters.get_secret": "secretsmanager:GetSecretValue",
    # Its get(); the client it is given is aws_clients.secrets_client (checked below).
    "aws_lambda_powertools.utilities.parameters.SecretsProvider": "secretsmanager:GetSecretValue",
    "aws_msk_iam_sasl_signer.MSKAuthTokenProvider.generate_auth_token": "MSK IAM: kafka-cluster actions",
    "aws_lambda_powertools.Tracer": "xray:PutTraceSegments, xray:PutTelemetryRecords",
}
NO_AWS_API = {
    "aws_lambda_powertools.Logger": "JSON lines on stdout",
    "aws_lambda_powertools.Metrics": "EMF lines on stdout",
    "aws_lambda_powertools.metrics.MetricUnit": "an enum",
    "aws_lambda_powertools.logging.utils.copy_config_to_registered_loggers": "logging setup",
    "botocore.exceptions": "exception classes",
    "botocore.config.Config": "client settings (timeouts, retries)",
}
# The boto3 clients aws_clients builds, by service: the only call (or function) each builder may
# appear in, where that client's calls are known: the sink's methods are traced below, Powertools'
# get is GetSecretValue, db.iam_token_signer only signs tokens locally (generate_db_auth_token).
CLIENT_USERS = {"sqs": "SqsDeadLetterSink", "secretsmanager": "SecretsProvider", "rds": "iam_token_signer"}
AWS_LIBRARIES = ("boto3", "botocore", "aws_lambda_powertools", "aws_msk_iam_sasl_signer", "aws_xray_sdk")
# SQS authorizes each batch operation as its single-message action (SQS API reference).
SQS_BATCH_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
# The Kafka requests kafka-python's producer sends, and the MSK IAM action each needs (Kafka's
# authorization of the request as MSK names it: MSK developer guide, "Semantics of IAM authorization
# policy actions and resources"; its "Common use cases" lists for producing idempotently exactly
# Connect, DescribeTopic, WriteData, WriteDataIdempotently).  Connect is needed for any connection.
KAFKA_REQUEST_ACTIONS: dict[str, tuple[str, str] | None] = {
    "ApiVersionsRequest": None,
    "SaslHandshakeRequest": None,
    "SaslAuthenticateRequest": None,
    "SaslBytesRequest": None,
    "MetadataRequest": ("kafka-cluster:DescribeTopic", "topic"),
    "ProduceRequest": ("kafka-cluster:WriteData", "topic"),
    "InitProducerIdRequest": ("kafka-cluster:WriteDataIdempotently", "cluster"),  # enable_idempotence
}
# Sent only by a transactional producer (transactional_id set).
KAFKA_TRANSACTIONAL_REQUESTS = frozenset(
    {
        "AddPartitionsToTxnRequest",
        "AddOffsetsToTxnRequest",
        "EndTxnRequest",
        "FindCoordinatorRequest",
        "TxnOffsetCommitRequest",
    }
)
SAMPLE_EVENTS = [("order", "order.created"), ("customer", "customer.renamed")]


def lambda_modules() -> dict[str, ast.Module]:
    """The package's modules the handler imports, directly or not (the CLI's are not the function's)."""
    trees = {p.stem: ast.parse(p.read_text(), str(p)) for p in PACKAGE.glob("*.py")}
    seen: set[str] = set()
    todo = ["__init__", "handler"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(trees[name]):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                todo += [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("outbox_relay."):
                todo.append((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("outbox_relay.")]
    return {name: trees[name] for name in seen}


def aws_usages(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Qualified names from AWS libraries a module uses (``boto3.client``, ``aws_lambda_powertools.
    Tracer``...), each with the node using it."""
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name): a.name for a in node.names if a.name.startswith(AWS_LIBRARIES)}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith(AWS_LIBRARIES)
        ):
            imported |= {(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names}
    usages: list[tuple[str, ast.AST]] = []
    consumed: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
            usages.append((f"{imported[node.value.id]}.{node.attr}", node))
            consumed.add(node.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in imported and node not in consumed:
            usages.append((imported[node.id], node))
    return usages


def _known(name: str, table: Mapping[str, str]) -> bool:
    return any(name == k or name.startswith(k + ".") for k in table)


@dataclass(frozen=True)
class CodeCalls:
    """The AWS APIs the function's code calls, found statically."""

    sqs_operations: frozenset[str]  # botocore operation names, on the dead-letter queue
    reads_secrets: bool
    signs_msk_iam: bool
    traces: bool
    secret_variables: frozenset[str]  # *_SECRET_ARN variables read: the secrets read_secret gets
    problems: tuple[str, ...]


def sqs_method_operations() -> dict[str, str]:
    client = boto3.session.Session().client(
        "sqs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    return dict(client.meta.method_to_api_mapping)


def client_problems(modules: Mapping[str, ast.Module], clients: Sequence[ast.AST]) -> list[str]:
    """Every boto3 client (``clients``: the ``boto3.client`` nodes) is built by a function of
    aws_clients (one place, explicit bounds) for a service of CLIENT_USERS, and that function is
    handed to that service's user only."""
    problems: list[str] = []
    client_ids = {id(node) for node in clients}
    builders: dict[str, str] = {}  # aws_clients function -> the service of the client it builds
    built: set[int] = set()
    for function in ast.walk(modules.get("aws_clients", ast.Module([], []))):
        if not isinstance(function, ast.FunctionDef):
            continue
        for call in ast.walk(function):
            if isinstance(call, ast.Call) and id(call.func) in client_ids:
                first = call.args[0] if call.args else None
                builders[function.name] = str(first.value) if isinstance(first, ast.Constant) else "?"
                built.add(id(call.func))
    for node in clients:
        if id(node) not in built:
            problems.append(f"a boto3 client outside aws_clients' builders: {ast.unparse(node)}")
    for builder, service in sorted(builders.items()):
        user = CLIENT_USERS.get(service)
        if user is None:
            problems.append(f"aws_clients.{builder} builds a {service} client: map its calls")
            continue
        handed = {
            id(inner)
            for tree in modules.values()
            for call in ast.walk(tree)
            if (isinstance(call, ast.Call) and _name(call.func) == user)
            or (isinstance(call, ast.FunctionDef) and call.name == user)
            for inner in ast.walk(call)
        }
        for module, tree in modules.items():
            for n in ast.walk(tree):
                if isinstance(n, (ast.Name, ast.Attribute)) and _name(n) == builder and id(n) not in handed:
                    problems.append(f"{module}: {ast.unparse(n)} is used outside {user}(...)")
    return problems


def _name(node: ast.AST) -> str | None:
    """``f`` for ``f`` and for ``x.f``."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def code_calls(modules: Mapping[str, ast.Module]) -> CodeCalls:
    problems: list[str] = []
    used: dict[str, list[ast.AST]] = {}
    for module, tree in modules.items():
        for name, node in aws_usages(tree):
            used.setdefault(name, []).append(node)
            if not _known(name, AWS_ENTRY_POINTS) and not _known(name, NO_AWS_API):
                problems.append(f"{module}: {name} is not in AWS_ENTRY_POINTS nor NO_AWS_API")
    problems += client_problems(modules, used.get("boto3.client", []))
    # SqsDeadLetterSink's methods the function reaches: `<x>.dead_letters.<method>(...)` in a module
    # the handler imports (Runtime.dead_letters, Relay.dead_letters), then `self.<method>` inside.
    (sink,) = (
        n
        for n in ast.walk(modules["deadletter_sqs"])
        if isinstance(n, ast.ClassDef) and n.name == "SqsDeadLetterSink"
    )
    methods = {f.name: f for f in sink.body if isinstance(f, ast.FunctionDef)}

    def self_calls(function: ast.FunctionDef, on_client: bool) -> set[str]:
        """Methods called on ``self`` (or on ``self.client``) in ``function``."""
        found = set()
        for n in ast.walk(function):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                receiver = n.func.value
                client = isinstance(receiver, ast.Attribute) and receiver.attr == "client"
                self_ = isinstance(receiver, ast.Name) and receiver.id == "self"
                if client if on_client else self_:
                    found.add(n.func.attr)
        return found

    # Called, or handed on (relay.py runs ``self.dead_letters.send`` in a thread, deadline-bounded).
    reached = {
        n.attr
        for module, tree in modules.items()
        if module != "deadletter_sqs"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and (
            (isinstance(n.value, ast.Attribute) and n.value.attr == "dead_letters")
            or (isinstance(n.value, ast.Name) and n.value.id == "dead_letters")
        )
    }
    todo = sorted(reached)
    while todo:
        method = todo.pop()
        if method in methods:
            new = self_calls(methods[method], on_client=False) - reached
            reached |= new
            todo += sorted(new)
    to_operation = sqs_method_operations()
    operations = set()
    for method in sorted(reached & set(methods)):
        for call in sorted(self_calls(methods[method], on_client=True)):
            if call not in to_operation:
                problems.append(f"SqsDeadLetterSink.{method} calls {call}, not an SQS operation")
            else:
                operations.add(to_operation[call])
    secret_variables = frozenset(n for n in code_reads() if n.endswith("_SECRET_ARN"))
    return CodeCalls(
        sqs_operations=frozenset(operations),
        reads_secrets=bool(
            {
                "aws_lambda_powertools.utilities.parameters.get_secret",
                "aws_lambda_powertools.utilities.parameters.SecretsProvider",
            }
            & set(used)
        ),
        signs_msk_iam="aws_msk_iam_sasl_signer.MSKAuthTokenProvider.generate_auth_token" in used,
        traces="aws_lambda_powertools.Tracer" in used,
        secret_variables=secret_variables,
        problems=tuple(problems),
    )


@functools.cache
def lambda_code_calls() -> CodeCalls:
    return code_calls(lambda_modules())


@functools.cache
def kafka_producer_requests() -> frozenset[str]:
    """Kafka request classes that kafka-python's producer and its network client import."""
    base = Path(kafka.__file__).parent
    files = [*base.glob("producer/*.py"), base / "cluster.py", *base.glob("net/**/*.py")]
    return frozenset(
        alias.name
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kafka.protocol")
        for alias in node.names
        if alias.name.endswith("Request")
    )


@dataclass(frozen=True)
class Need:
    """An AWS request the code makes: its action and resource, and the condition keys the request
    carries (``context``: what the role's statement for it must pin with a condition)."""

    action: str
    resource: str
    why: str
    context: tuple[tuple[str, str], ...] = ()


# Each secret variable, and the parameter naming the customer managed KMS key that encrypts that
# secret (empty: the AWS managed key aws/secretsmanager, which needs no permission of the caller).
SECRET_KMS_KEYS = {
    "OUTBOX_DB_SECRET_ARN": "DbSecretKmsKeyId",
    "KAFKA_SASL_SECRET_ARN": "KafkaSaslSecretKmsKeyId",
}
# Condition operators the checker evaluates (exact, or with IAM wildcards), all case-sensitive.
EXACT_OPERATORS = frozenset({"StringEquals", "ArnEquals"})
LIKE_OPERATORS = frozenset({"StringLike", "ArnLike"})


def secrets_manager_decrypt(stack: Stack, key_id: str, secret_arn: str, why: str) -> Need:
    """kms:Decrypt as Secrets Manager calls it for GetSecretValue of a secret on a customer managed
    key: from the secretsmanager endpoint of the region (kms:ViaService), with the encryption
    context {"SecretARN": <the secret's ARN>} (Secrets Manager user guide, "Secrets Manager
    encryption context")."""
    return Need(
        "kms:Decrypt",
        f"arn:aws:kms:{stack.region}:{stack.account}:key/{key_id}",
        why,
        (
            ("kms:ViaService", f"secretsmanager.{stack.region}.amazonaws.com"),
            ("kms:EncryptionContext:SecretARN", secret_arn),
        ),
    )


def queue_arn(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    account, name = parts.path.strip("/").split("/")
    assert host.startswith("sqs.") and host.endswith(".amazonaws.com"), url
    return f"arn:aws:sqs:{host.split('.')[1]}:{account}:{name}"


def needed_permissions(
    stack: Stack, env: Mapping[str, str], calls: CodeCalls
) -> tuple[list[Need], list[str]]:
    """What the function's role must allow for the calls its code makes in this deployment."""
    needs: list[Need] = []
    problems: list[str] = []
    for operation in sorted(calls.sqs_operations):
        action = f"sqs:{SQS_BATCH_ACTIONS.get(operation, operation)}"
        needs.append(Need(action, queue_arn(env["DLQ_QUEUE_URL"]), f"SqsDeadLetterSink: {operation}"))
    if calls.reads_secrets:
        for variable in sorted(calls.secret_variables):
            if not env.get(variable):
                continue
            needs.append(Need("secretsmanager:GetSecretValue", env[variable], f"get_secret({variable})"))
            if variable not in SECRET_KMS_KEYS:
                problems.append(f"{variable}: name its KMS key parameter in SECRET_KMS_KEYS")
            elif key_id := stack.parameters.get(SECRET_KMS_KEYS[variable], ""):
                why = f"get_secret({variable}): the secret's customer managed key"
                needs.append(secrets_manager_decrypt(stack, key_id, env[variable], why))
    if env.get("OUTBOX_DB_IAM_AUTH") == "true":  # db.iam_token_signer: a token to log in as the user
        resource_id, user = stack.parameters["DbClusterResourceId"], env["OUTBOX_DB_USER"]
        db_user = f"arn:aws:rds-db:{stack.region}:{stack.account}:dbuser:{resource_id}/{user}"
        needs.append(Need("rds-db:connect", db_user, "Aurora IAM database authentication"))
    mechanism = env.get("KAFKA_SASL_MECHANISM", "")
    if mechanism == "OAUTHBEARER" and calls.signs_msk_iam:
        cluster = stack.parameters["MskClusterArn"]
        config = load_config(
            # The layer's CA path does not exist here; the configuration only checks it is a file.
            lambda_environment({**env, "OUTBOX_DB_SSL_CA": __file__}, stack.region)
        )
        producer = producer_config(config.kafka, 1000)
        requests = kafka_producer_requests()
        unmapped = requests - set(KAFKA_REQUEST_ACTIONS) - KAFKA_TRANSACTIONAL_REQUESTS
        problems += [f"kafka-python sends {r}: add it to KAFKA_REQUEST_ACTIONS" for r in sorted(unmapped)]
        if producer.get("transactional_id"):
            problems.append("the producer is transactional: map KAFKA_TRANSACTIONAL_REQUESTS")
        sent = {r for r in requests if r in KAFKA_REQUEST_ACTIONS}
        if not producer.get("enable_idempotence"):
            sent.discard("InitProducerIdRequest")
        needs.append(Need("kafka-cluster:Connect", cluster, "MSK IAM authentication"))
        topics = [
            config.relay.topic_template.format(aggregate_type=a, event_type=e) for a, e in SAMPLE_EVENTS
        ]
        topic_arns = [cluster.replace(":cluster/", ":topic/", 1) + "/" + t for t in topics]
        for request in sorted(sent):
            mapped = KAFKA_REQUEST_ACTIONS[request]
            if mapped is None:
                continue
            action, kind = mapped
            for resource in [cluster] if kind == "cluster" else topic_arns:
                needs.append(Need(action, resource, f"kafka-python {request}"))
    if calls.traces:
        for action in ("xray:PutTraceSegments", "xray:PutTelemetryRecords"):
            needs.append(Need(action, "*", "Powertools Tracer"))
    return needs, problems


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_policies(stack: Stack, handler: str = HANDLER) -> tuple[list[dict[str, Any]], list[str]]:
    """The function role's inline statements (intrinsics resolved) and managed policy ARNs."""
    role_name = relay_function(stack.template, handler)["Role"]["Fn::GetAtt"][0]
    role = stack.template["Resources"][role_name]["Properties"]
    statements = [
        statement
        for policy in stack.resolve(role.get("Policies", []))
        for statement in _as_list(policy["PolicyDocument"]["Statement"])
    ]
    return statements, [cfn_str(arn) for arn in stack.resolve(role.get("ManagedPolicyArns", []))]


def _conditions(statement: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(operator, condition key in lower case, values) of each condition of the statement."""
    return [
        (operator, key.lower(), [cfn_str(v) for v in _as_list(values)])
        for operator, block in statement.get("Condition", {}).items()
        for key, values in block.items()
    ]


def _context(need: Need) -> dict[str, str]:
    return {key.lower(): value for key, value in need.context}


def _condition_holds(operator: str, key: str, values: Sequence[str], need: Need) -> bool:
    """Whether the request ``need`` stands for meets one condition (a key it lacks fails it)."""
    actual = _context(need).get(key)
    if actual is None:
        return False
    if operator in EXACT_OPERATORS:
        return actual in values
    if operator in LIKE_OPERATORS:
        return any(iam_match(v, actual, case_sensitive=True) for v in values)
    return False  # not modelled: check_iam reports it


def _allows(statement: Mapping[str, Any], need: Need) -> bool:
    return (
        statement.get("Effect") == "Allow"
        and any(iam_match(a, need.action) for a in _as_list(statement.get("Action", [])))
        and any(
            iam_match(r, need.resource, case_sensitive=True) for r in _as_list(statement.get("Resource", []))
        )
        and all(_condition_holds(op, key, values, need) for op, key, values in _conditions(statement))
    )


def check_iam(
    needs: Sequence[Need], statements: Sequence[Mapping[str, Any]], managed: Sequence[str]
) -> list[str]:
    """Every need allowed (its request meets the statement's conditions); every inline grant
    justified by a need (nothing more: where the needs' requests carry condition keys, the grant
    pins each of them to their values); managed policies only from the AWS_MANAGED table."""
    problems = [f"managed policy {arn} is not in AWS_MANAGED" for arn in managed if arn not in AWS_MANAGED]
    granted = list(statements) + [
        {"Effect": "Allow", "Action": sorted(AWS_MANAGED[arn][0]), "Resource": "*"}
        for arn in managed
        if arn in AWS_MANAGED
    ]
    for need in needs:
        if not any(_allows(s, need) for s in granted):
            problems.append(f"not allowed: {need.action} on {need.resource} ({need.why})")
    for statement in statements:
        label = statement.get("Sid") or json.dumps(statement.get("Action"))
        if statement.get("Effect") != "Allow" or {"NotAction", "NotResource"} & set(statement):
            problems.append(f"{label}: only plain Allow statements are modelled")
            continue
        resources = [cfn_str(r) for r in _as_list(statement["Resource"])]
        if "*" in resources:
            problems.append(f"{label}: Resource '*'")
        conditions = _conditions(statement)
        problems += [
            f"{label}: condition operator {op} is not modelled"
            for op in sorted({op for op, _, _ in conditions} - EXACT_OPERATORS - LIKE_OPERATORS)
        ]
        pinned: dict[str, list[str]] = {}
        for _, key, values in conditions:
            pinned.setdefault(key, []).extend(values)
        for pattern in _as_list(statement["Action"]):
            actions = expand_action(pattern)
            if not actions:
                problems.append(f"{label}: {pattern} names no IAM action")
            for action in sorted(actions):
                for resource in resources:
                    justifying = [
                        need
                        for need in needs
                        if need.action.lower() == action
                        and iam_match(resource, need.resource, case_sensitive=True)
                    ]
                    if not justifying:
                        problems.append(
                            f"{label}: allows {action} on {resource}, which nothing the code calls needs"
                        )
                    for key in sorted({k for need in justifying for k in _context(need)}):
                        if key not in pinned:
                            problems.append(
                                f"{label}: allows {action} on {resource} whatever its {key} "
                                "(the code's requests carry one: pin it with a condition)"
                            )
                        for value in pinned.get(key, []):
                            if not any(_context(need).get(key) == value for need in justifying):
                                problems.append(
                                    f"{label}: allows {action} on {resource} with {key} {value}, "
                                    "which nothing the code calls needs"
                                )
    return problems


def test_code_calls_are_found_and_every_aws_name_is_mapped() -> None:
    modules = lambda_modules()
    assert "cli" not in modules and {"handler", "runtime", "relay", "deadletter_sqs"} <= set(modules)
    calls = code_calls(modules)
    assert calls.problems == ()
    assert calls.sqs_operations == {
        "SendMessageBatch"
    }  # receive/delete_message_batch: the CLI's, not the function's
    assert calls.reads_secrets and calls.signs_msk_iam and calls.traces
    assert calls.secret_variables == {"OUTBOX_DB_SECRET_ARN", "KAFKA_SASL_SECRET_ARN"}
    assert {"ProduceRequest", "MetadataRequest", "InitProducerIdRequest"} <= kafka_producer_requests()
    for action in {
        *(a for a, _ in filter(None, KAFKA_REQUEST_ACTIONS.values())),
        *SQS_BATCH_ACTIONS.values(),
    }:
        assert expand_action(action if ":" in action else f"sqs:{action}"), action
    for actions, _ in AWS_MANAGED.values():
        assert all(len(expand_action(a)) == 1 for a in actions), actions


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_the_role_allows_every_call_the_code_makes_and_nothing_more(deployment: str) -> None:
    parameters, region = DEPLOYMENTS[deployment]
    stack = Stack(transformed(parameters), parameters, region=region)
    env = function_environment(stack)
    needs, problems = needed_permissions(stack, env, lambda_code_calls())
    statements, managed = role_policies(stack)
    no_problems(problems + check_iam(needs, statements, managed))


def janitor_calls(calls: CodeCalls) -> CodeCalls:
    """What the janitor's entry point reaches of ``calls``: the database (its secret) and X-Ray.
    Runtime builds the Kafka producer and the SQS client only on first use, which retention never
    makes; tests/integration/test_alarm_metrics.py runs the janitor with both unreachable."""
    return dataclasses.replace(
        calls,
        sqs_operations=frozenset(),
        signs_msk_iam=False,
        secret_variables=frozenset(v for v in calls.secret_variables if v.startswith("OUTBOX_DB_")),
    )


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_the_janitor_role_allows_what_retention_calls_and_nothing_more(deployment: str) -> None:
    """JanitorFunction: the database secret (and its customer managed key, if any) and X-Ray; no
    SQS, no MSK, not the SCRAM secret nor its key."""
    parameters, region = DEPLOYMENTS[deployment]
    stack = Stack(transformed(parameters), parameters, region=region)
    env = function_environment(stack, JANITOR_HANDLER)
    database_only = {k: v for k, v in env.items() if not k.startswith(("KAFKA_", "DLQ_"))}
    needs, problems = needed_permissions(stack, database_only, janitor_calls(lambda_code_calls()))
    assert {n.action for n in needs} >= {"xray:PutTraceSegments"}
    statements, managed = role_policies(stack, JANITOR_HANDLER)
    no_problems(problems + check_iam(needs, statements, managed))


def test_sam_send_message_wildcard_grants_only_send_message() -> None:
    """SQSSendMessagePolicy grants sqs:SendMessage*: today that is exactly sqs:SendMessage (which
    also authorizes SendMessageBatch); this fails if AWS adds an action the wildcard would take in."""
    assert expand_action("sqs:SendMessage*") == {"sqs:sendmessage"}


def test_iam_checker_reports_bad_input() -> None:
    queue = "arn:aws:sqs:eu-west-1:1:q"
    needs = [Need("sqs:SendMessage", queue, "dlq"), Need("xray:PutTraceSegments", "*", "tracer")]
    xray = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"
    ok: list[dict[str, Any]] = [{"Effect": "Allow", "Action": ["sqs:SendMessage*"], "Resource": queue}]
    assert check_iam(needs, ok, [xray]) == []
    assert check_iam(needs, [], [xray]) == ["not allowed: sqs:SendMessage on arn:aws:sqs:eu-west-1:1:q (dlq)"]
    assert check_iam(needs, ok, []) == ["not allowed: xray:PutTraceSegments on * (tracer)"]
    wrong = [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:eu-west-1:1:other"}]
    assert check_iam(needs, wrong, [xray]) == [
        "not allowed: sqs:SendMessage on arn:aws:sqs:eu-west-1:1:q (dlq)",
        '"sqs:SendMessage": allows sqs:sendmessage on arn:aws:sqs:eu-west-1:1:other, '
        "which nothing the code calls needs",
    ]
    extra: list[dict[str, Any]] = [
        *ok,
        {"Sid": "More", "Effect": "Allow", "Action": ["sqs:ReceiveMessage"], "Resource": queue},
    ]
    assert check_iam(needs, extra, [xray]) == [
        f"More: allows sqs:receivemessage on {queue}, which nothing the code calls needs"
    ]
    star = [{"Sid": "Star", "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}]
    assert "Star: Resource '*'" in check_iam(needs, star, [xray])
    assert check_iam(needs, ok, [xray, "arn:aws:iam::aws:policy/AdministratorAccess"]) == [
        "managed policy arn:aws:iam::aws:policy/AdministratorAccess is not in AWS_MANAGED"
    ]
    typo: list[dict[str, Any]] = [
        *ok,
        {"Sid": "Typo", "Effect": "Allow", "Action": "sqs:SendMesage", "Resource": queue},
    ]
    assert check_iam(needs, typo, [xray]) == ["Typo: sqs:SendMesage names no IAM action"]


def _kms_statements(parameters: Mapping[str, str], handler: str) -> list[dict[str, Any]]:
    stack = Stack(transformed(parameters), parameters)
    statements, _ = role_policies(stack, handler)
    return [dict(s) for s in statements if any(a.lower().startswith("kms:") for a in _as_list(s["Action"]))]


def _decrypt_via_secrets_manager(key_id: str, secret_arn: str) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Action": "kms:Decrypt",
        "Resource": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}",
        "Condition": {
            "StringEquals": {
                "kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com",
                "kms:EncryptionContext:SecretARN": secret_arn,
            }
        },
    }


DB_SECRET_ARN = SCENARIOS["msk-iam"]["DbSecretArn"]
AURORA_IAM_WITH_A_KEY = {**SCENARIOS["aurora-iam"], "DbSecretKmsKeyId": DB_SECRET_KMS_KEY_ID}


@pytest.mark.parametrize(
    ("parameters", "relay", "janitor"),
    [
        (SCENARIOS["msk-iam"], [], []),
        (SCENARIOS["aurora-iam"], [], []),
        # Refused by the Rules (test_template_rules); the template grants nothing for it either.
        (AURORA_IAM_WITH_A_KEY, [], []),
        (
            SCENARIOS["db-secret-cmk"],
            [(DB_SECRET_KMS_KEY_ID, DB_SECRET_ARN)],
            [(DB_SECRET_KMS_KEY_ID, DB_SECRET_ARN)],
        ),
        (SCENARIOS["scram"], [(SCRAM_KMS_KEY_ID, SCRAM_SECRET_ARN)], []),
        (
            SCENARIOS["scram-db-secret-same-cmk"],
            [(SCRAM_KMS_KEY_ID, DB_SECRET_ARN), (SCRAM_KMS_KEY_ID, SCRAM_SECRET_ARN)],
            [(SCRAM_KMS_KEY_ID, DB_SECRET_ARN)],
        ),
    ],
    ids=["msk-iam", "aurora-iam", "aurora-iam-with-a-key", "db-secret-cmk", "scram", "scram-db-same-cmk"],
)
def test_secrets_on_customer_managed_keys_are_decrypted_through_secrets_manager_only(
    parameters: Mapping[str, str], relay: list[tuple[str, str]], janitor: list[tuple[str, str]]
) -> None:
    """Each function may decrypt with a secret's customer managed key exactly when it reads that
    secret, only through Secrets Manager and only for that secret (its encryption context); without
    a key (DbSecretKmsKeyId, KafkaSaslSecretKmsKeyId) there is no KMS statement at all."""
    for handler, expected in ((HANDLER, relay), (JANITOR_HANDLER, janitor)):
        found = [{k: v for k, v in s.items() if k != "Sid"} for s in _kms_statements(parameters, handler)]
        wanted = [_decrypt_via_secrets_manager(key_id, secret) for key_id, secret in expected]
        assert sorted(json.dumps(s, sort_keys=True) for s in found) == sorted(
            json.dumps(s, sort_keys=True) for s in wanted
        ), handler


@pytest.mark.parametrize("dropped", ["kms:ViaService", "kms:EncryptionContext:SecretARN"])
def test_the_iam_checker_refuses_a_decrypt_grant_without_its_conditions(dropped: str) -> None:
    """The deployed grant, less one of its conditions: the checker reports the broader grant."""
    parameters = SCENARIOS["db-secret-cmk"]
    stack = Stack(transformed(parameters), parameters)
    env = function_environment(stack, JANITOR_HANDLER)
    database_only = {k: v for k, v in env.items() if not k.startswith(("KAFKA_", "DLQ_"))}
    needs, problems = needed_permissions(stack, database_only, janitor_calls(lambda_code_calls()))
    statements, managed = role_policies(stack, JANITOR_HANDLER)
    assert problems == [] and check_iam(needs, statements, managed) == []
    loosened = [dict(s) for s in statements]
    (grant,) = (s for s in loosened if s.get("Sid") == "DecryptDbSecret")
    grant["Condition"] = {"StringEquals": dict(grant["Condition"]["StringEquals"])}
    del grant["Condition"]["StringEquals"][dropped]
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{DB_SECRET_KMS_KEY_ID}"
    assert check_iam(needs, loosened, managed) == [
        f"DecryptDbSecret: allows kms:decrypt on {key} whatever its {dropped.lower()} "
        "(the code's requests carry one: pin it with a condition)"
    ]


def test_iam_checker_evaluates_conditions() -> None:
    key = "arn:aws:kms:eu-west-1:1:key/k"
    via = ("kms:ViaService", "secretsmanager.eu-west-1.amazonaws.com")
    secret = ("kms:EncryptionContext:SecretARN", "arn:aws:secretsmanager:eu-west-1:1:secret:db-AbCdEf")
    needs = [Need("kms:Decrypt", key, "db secret", (via, secret))]

    def decrypt(condition: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"Sid": "D", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": key, "Condition": condition}
        ]

    exact = {"StringEquals": dict([via, secret])}
    assert check_iam(needs, decrypt(exact), []) == []
    # Keys are case-insensitive; a like-pattern that matches allows, but grants more than needed.
    like = {"StringEquals": {"KMS:VIASERVICE": via[1]}, "ArnLike": {secret[0]: "arn:aws:secretsmanager:*"}}
    assert check_iam(needs, decrypt(like), []) == [
        f"D: allows kms:decrypt on {key} with kms:encryptioncontext:secretarn arn:aws:secretsmanager:*, "
        "which nothing the code calls needs"
    ]
    other_secret = {"StringEquals": {**dict([via]), secret[0]: "arn:aws:secretsmanager:eu-west-1:1:secret:x"}}
    assert check_iam(needs, decrypt(other_secret), []) == [
        f"not allowed: kms:Decrypt on {key} (db secret)",
        f"D: allows kms:decrypt on {key} with kms:encryptioncontext:secretarn "
        "arn:aws:secretsmanager:eu-west-1:1:secret:x, which nothing the code calls needs",
    ]
    unknown_key = {"StringEquals": {**exact["StringEquals"], "aws:SourceVpce": "vpce-1"}}
    assert check_iam(needs, decrypt(unknown_key), []) == [f"not allowed: kms:Decrypt on {key} (db secret)"]
    if_exists = {"StringEqualsIfExists": dict([via, secret])}
    assert check_iam(needs, decrypt(if_exists), []) == [
        f"not allowed: kms:Decrypt on {key} (db secret)",
        "D: condition operator StringEqualsIfExists is not modelled",
    ]
