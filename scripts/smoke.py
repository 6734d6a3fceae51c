#!/usr/bin/env python3
"""Post-deploy smoke test of an outbox-relay stack: ``make smoke STACK=<name> [REGION=<region>]``.

Usage: ``.venv/bin/python scripts/smoke.py --stack NAME [--region REGION]``

Reads the stack's resources from CloudFormation, then checks, one line each:

- the stack is in a ``*_COMPLETE`` state that is not a rollback;
- the function (``RelayFunction``) is ``Active`` and its last update succeeded;
- ``{"action": "status"}`` and ``{"dry_run": true}`` invoked on the deployed function answer
  ``"ok": true`` (a dry run leases nothing, writes nothing, sends nothing);
- the relay schedule and the janitor schedule exist, are ``ENABLED`` and target the relay function
  and the janitor function (``JanitorFunction``; the relay function in stacks without one);
- the alarms exist in CloudWatch (their state and notification actions are printed: a
  fresh stack's lag and no-success alarms may well be in ALARM; that is reported, not failed);
- the dead-letter queue exists (its depth is printed).

Exit status: 0 when every check passed; 1 when any check failed, or nothing could be checked
(stack not found, no region, expired credentials, AWS unreachable: one line, no traceback);
2 for a usage error; 3 when skipped: with no AWS credentials configured at all it prints one line
starting ``smoke: SKIPPED`` and checks nothing (not 0: a pipeline whose credentials went missing
must not pass; it never prints PASS).

Every AWS call has a 5 s connect timeout, a 10 s read timeout (the invocations wait as long as
the function may run, and at least 30 s) and at most 2 attempts.  The invocations are real:
``status`` runs a few read-only queries and ``dry_run`` reads one batch; both emit the run's
metrics like any invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# What template.yaml (after the SAM transform) names the resources this checks.
FUNCTION_ID = "RelayFunction"
JANITOR_FUNCTION_ID = "JanitorFunction"
QUEUE_ID = "DeadLetterQueue"
ALARM_IDS = (
    "LagAlarm",
    "DeadLetteredAlarm",
    "DeadLetterQueueNotEmptyAlarm",
    "FunctionErrorsAlarm",
    "NoSuccessfulRunAlarm",
    "AsyncEventsDroppedAlarm",
    "JanitorNotSucceedingAlarm",
    "DeadRowsAlarm",
    "TopicUnavailableAlarm",
    "ScheduleDeadLetterAlarm",
)
# The schedules are told apart by the action in their input: the relay's names none.
SCHEDULE_ROLES = {"relay": "the relay does not run", "janitor": "old rows are not deleted"}

FUNCTION_TYPE = "AWS::Lambda::Function"
QUEUE_TYPE = "AWS::SQS::Queue"
SCHEDULE_TYPE = "AWS::Scheduler::Schedule"
ALARM_TYPE = "AWS::CloudWatch::Alarm"

GOOD_STACK_STATES = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE")
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
MIN_INVOKE_READ_TIMEOUT = 30.0
MAX_DETAIL = 300


def client_config(read_timeout: float = READ_TIMEOUT) -> Config:
    return Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
    )


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_error(exc: Exception) -> str:
    """An AWS error as one line: ``<code>: <message>`` for service errors, botocore's text else."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Error")
        message = error.get("Message", "") or str(exc)
        return one_line(f"{code}: {message}")
    return one_line(str(exc) or type(exc).__name__)


# --- what the stack holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    logical_id: str
    physical_id: str
    status: str


@dataclass
class Inventory:
    stack: str
    status: str
    resource_count: int
    function: Resource | None = None
    janitor: Resource | None = None
    queue: Resource | None = None
    schedules: list[Resource] = field(default_factory=list)
    alarms: list[Resource] = field(default_factory=list)


class StackNotFound(Exception):
    pass


def discover(cloudformation: Any, stack: str) -> Inventory:
    """The stack's status and the resources the checks need, from CloudFormation."""
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in describe_error(exc):
            raise StackNotFound(stack) from exc
        raise
    if not described:
        raise StackNotFound(stack)
    inventory = Inventory(stack, str(described[0]["StackStatus"]), 0)
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack):
        for summary in page["StackResourceSummaries"]:
            kind = summary.get("ResourceType", "")
            if not kind:  # moto lists resources it cannot create this way
                continue
            inventory.resource_count += 1
            resource = Resource(
                str(summary.get("LogicalResourceId", "")),
                str(summary.get("PhysicalResourceId", "")),
                str(summary.get("ResourceStatus", "")),
            )
            if kind == FUNCTION_TYPE and resource.logical_id == FUNCTION_ID:
                inventory.function = resource
            elif kind == FUNCTION_TYPE and resource.logical_id == JANITOR_FUNCTION_ID:
                inventory.janitor = resource
            elif kind == QUEUE_TYPE and resource.logical_id == QUEUE_ID:
                inventory.queue = resource
            elif kind == SCHEDULE_TYPE:
                inventory.schedules.append(resource)
            elif kind == ALARM_TYPE:
                inventory.alarms.append(resource)
    return inventory


# --- checks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self, width: int = 18) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name:<{width}}  {one_line(self.detail)}"


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str) -> Check:
    return Check(name, False, detail)


def resource_problem(resource: Resource) -> str | None:
    """Why a stack resource cannot be relied on, or None."""
    if not resource.physical_id:
        return f"{resource.logical_id} has no physical id ({resource.status or 'no status'})"
    if not resource.status.endswith("_COMPLETE") or resource.status.startswith("DELETE"):
        return f"{resource.logical_id} is {resource.status}"
    return None


def check_stack(inventory: Inventory) -> Check:
    status = inventory.status
    detail = f"{inventory.stack}: {status}, {inventory.resource_count} resources"
    if status in GOOD_STACK_STATES:
        return passed("stack", detail)
    if "ROLLBACK" in status:
        return failed("stack", f"{detail}: the last deploy was rolled back")
    if status.endswith("IN_PROGRESS"):
        return failed("stack", f"{detail}: wait until the deploy has finished")
    return failed("stack", detail)


@dataclass(frozen=True)
class Function:
    name: str
    arn: str
    timeout_seconds: int


def check_function(lambda_client: Any, inventory: Inventory) -> tuple[Check, Function | None]:
    resource = inventory.function
    if resource is None:
        return failed("function", f"no {FUNCTION_ID} in the stack: is it an outbox-relay stack?"), None
    problem = resource_problem(resource)
    if problem:
        return failed("function", problem), None
    try:
        config: dict[str, Any] = lambda_client.get_function_configuration(FunctionName=resource.physical_id)
    except (ClientError, BotoCoreError) as exc:
        return failed("function", f"{resource.physical_id}: {describe_error(exc)}"), None
    function = Function(
        str(config["FunctionName"]), str(config["FunctionArn"]), int(config.get("Timeout", 3))
    )
    state = config.get("State", "Active")
    update = config.get("LastUpdateStatus", "Successful")
    detail = (
        f"{function.name}: {state}, {config.get('Runtime', '?')} {'/'.join(config.get('Architectures', []))},"
        f" {config.get('MemorySize', '?')} MB, timeout {function.timeout_seconds} s"
    )
    if state != "Active":
        return failed("function", f"{detail}: {config.get('StateReason', 'not active')}"), None
    if update != "Successful":
        reason = config.get("LastUpdateStatusReason", "")
        return failed(
            "function", f"{detail}; last update {update}{': ' + reason if reason else ''}"
        ), function
    return passed("function", detail), function


def invoke(client: Any, function: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke synchronously; the response with ``Payload`` read into bytes."""
    response: dict[str, Any] = client.invoke(
        FunctionName=function, InvocationType="RequestResponse", Payload=json.dumps(payload).encode()
    )
    stream = response.get("Payload")
    response["Payload"] = stream.read() if stream is not None else b""
    return response


def _answer(name: str, response: dict[str, Any]) -> dict[str, Any] | Check:
    """The function's JSON answer, or the failed check saying why there is none."""
    raw: bytes = response.get("Payload", b"")
    text = raw.decode("utf-8", errors="replace")
    try:
        answer = json.loads(text) if text else None
    except ValueError:
        answer = None
    if response.get("FunctionError"):
        if isinstance(answer, dict) and ("errorMessage" in answer or "errorType" in answer):
            why = f"{answer.get('errorType', 'Error')}: {answer.get('errorMessage', '')}"
        else:
            why = text or "no payload"
        return failed(name, f"function error ({response['FunctionError']}): {why}")
    if response.get("StatusCode", 200) != 200:
        return failed(name, f"invoke answered status {response.get('StatusCode')}: {text}")
    if not isinstance(answer, dict):
        return failed(name, f"not a JSON object: {text or 'empty payload'}")
    if answer.get("ok") is not True:
        return failed(name, f"ok is {json.dumps(answer.get('ok'))}: {answer.get('error', text)}")
    return answer


def interpret_status(response: dict[str, Any]) -> Check:
    name = "invoke status"
    answer = _answer(name, response)
    if isinstance(answer, Check):
        return answer
    if answer.get("action") != "status":
        return failed(name, f"not a status answer: {json.dumps(answer)}")
    topics = answer.get("topics") or []
    shown = ", ".join(
        f"{t.get('topic')} ({t.get('pending')} pending, {t.get('dead')} dead)" for t in topics[:3]
    )
    more = f" (+{len(topics) - 3} more)" if len(topics) > 3 else ""
    return passed(
        name,
        f"pending {answer.get('pending')} (oldest {answer.get('oldest_pending_age_seconds')} s),"
        f" dead {answer.get('dead')}, published {answer.get('published')};"
        f" topics: {shown or 'none'}{more}; leases held: {len(answer.get('leases') or [])}",
    )


def interpret_dry_run(response: dict[str, Any]) -> Check:
    name = "invoke dry_run"
    answer = _answer(name, response)
    if isinstance(answer, Check):
        return answer
    if answer.get("dry_run") is not True:
        # An ok answer without the flag is a real run: it may have published.
        return failed(name, f"the answer is not a dry run's: {json.dumps(answer)}")
    return passed(
        name,
        f"would publish {answer.get('would_publish')} (pending {answer.get('pending')},"
        f" oldest {answer.get('oldest_pending_age_seconds')} s)",
    )


INVOCATIONS: tuple[tuple[str, dict[str, Any], Callable[[dict[str, Any]], Check]], ...] = (
    ("invoke status", {"action": "status"}, interpret_status),
    ("invoke dry_run", {"dry_run": True}, interpret_dry_run),
)


def check_invocations(client: Any, function: Function | None) -> list[Check]:
    checks = []
    for name, payload, interpret in INVOCATIONS:
        if function is None:
            checks.append(failed(name, "not invoked: the function check failed"))
            continue
        try:
            checks.append(interpret(invoke(client, function.name, payload)))
        except ClientError as exc:
            why = describe_error(exc)
            if exc.response.get("Error", {}).get("Code") == "TooManyRequestsException":
                why += (
                    " (throttled: every reserved concurrent execution is busy with scheduled runs,"
                    " or ReservedConcurrency is 0; retry, or reserve one more)"
                )
            checks.append(failed(name, why))
        except BotoCoreError as exc:
            checks.append(failed(name, describe_error(exc)))
    return checks


def schedule_role(schedule: dict[str, Any]) -> str:
    """``relay``, ``janitor`` (the action its input names) or ``?`` for an input it cannot read."""
    raw = schedule.get("Target", {}).get("Input") or "{}"
    try:
        payload = json.loads(raw)
    except ValueError:
        return "?"
    return str(payload.get("action", "relay")) if isinstance(payload, dict) else "?"


def _get_schedule(scheduler: Any, name: str) -> dict[str, Any] | None:
    """The schedule (in the default group, else whichever group has it), or None."""
    try:
        found: dict[str, Any] = scheduler.get_schedule(Name=name)
        return found
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    for page in scheduler.get_paginator("list_schedules").paginate(NamePrefix=name):
        for item in page["Schedules"]:
            if item["Name"] == name:
                other: dict[str, Any] = scheduler.get_schedule(Name=name, GroupName=item["GroupName"])
                return other
    return None


def check_schedules(scheduler: Any, inventory: Inventory, function: Function | None) -> list[Check]:
    checks: list[Check] = []
    seen: set[str] = set()
    janitor = _janitor_function(inventory, function)
    for resource in inventory.schedules:
        name = f"schedule {resource.logical_id}"
        problem = resource_problem(resource)
        if problem:
            checks.append(failed(name, problem))
            continue
        try:
            schedule = _get_schedule(scheduler, resource.physical_id)
        except (ClientError, BotoCoreError) as exc:
            checks.append(failed(name, f"{resource.physical_id}: {describe_error(exc)}"))
            continue
        if schedule is None:
            checks.append(
                failed(name, f"{resource.physical_id} is in the stack but not in EventBridge Scheduler")
            )
            continue
        role = schedule_role(schedule)
        if role in SCHEDULE_ROLES and role not in seen:
            seen.add(role)
            name = f"schedule {role}"
        target = janitor if role == "janitor" and janitor is not None else function
        checks.append(_judge_schedule(name, role, schedule, target))
    for role, consequence in SCHEDULE_ROLES.items():
        if role not in seen:
            checks.append(failed(f"schedule {role}", f"none in the stack: {consequence}"))
    return checks


def _janitor_function(inventory: Inventory, relay: Function | None) -> Function | None:
    """The stack's janitor function (same account and region as the relay's), or None."""
    resource = inventory.janitor
    if relay is None or resource is None or not resource.physical_id:
        return None
    return Function(resource.physical_id, f"{relay.arn.rsplit(':', 1)[0]}:{resource.physical_id}", 0)


def _judge_schedule(name: str, role: str, schedule: dict[str, Any], function: Function | None) -> Check:
    group = schedule.get("GroupName") or "default"
    where = "" if group == "default" else f" (group {group})"
    detail = f"{schedule['Name']}{where}: {schedule.get('State')}, {schedule.get('ScheduleExpression')}"
    if schedule.get("State") != "ENABLED":
        return failed(name, f"{detail}: {SCHEDULE_ROLES.get(role, 'it does not run')}")
    target = str(schedule.get("Target", {}).get("Arn", ""))
    if function is not None and target != function.arn and not target.startswith(function.arn + ":"):
        return failed(name, f"{detail}: targets {target}, not {function.name}")
    return passed(name, detail)


def check_alarms(cloudwatch: Any, inventory: Inventory) -> list[Check]:
    by_id = {r.logical_id: r for r in inventory.alarms}
    wanted = list(ALARM_IDS) + sorted(set(by_id) - set(ALARM_IDS))
    names = [by_id[i].physical_id for i in wanted if i in by_id and not resource_problem(by_id[i])]
    found: dict[str, dict[str, Any]] = {}
    error: str | None = None
    try:
        if names:  # no names would describe every alarm in the account
            for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNames=names):
                found.update({alarm["AlarmName"]: alarm for alarm in page["MetricAlarms"]})
    except (ClientError, BotoCoreError) as exc:
        error = describe_error(exc)
    checks = []
    for logical_id in wanted:
        name = f"alarm {logical_id}"
        resource = by_id.get(logical_id)
        if resource is None:
            checks.append(failed(name, "not in the stack"))
            continue
        problem = resource_problem(resource)
        alarm = found.get(resource.physical_id)
        if problem:
            checks.append(failed(name, problem))
        elif error:
            checks.append(failed(name, f"{resource.physical_id}: {error}"))
        elif alarm is None:
            checks.append(failed(name, f"{resource.physical_id} is in the stack but not in CloudWatch"))
        else:
            checks.append(
                passed(name, f"{resource.physical_id}: {alarm.get('StateValue')}; {_actions(alarm)}")
            )
    return checks


def _actions(alarm: dict[str, Any]) -> str:
    actions = list(alarm.get("AlarmActions") or [])
    if not actions:
        return "actions: none"
    targets = ", ".join(a.rsplit(":", 1)[-1] for a in actions)
    return f"actions: {targets}{'' if alarm.get('ActionsEnabled', True) else ' (disabled)'}"


def check_queue(sqs: Any, inventory: Inventory) -> Check:
    name = "dead-letter queue"
    resource = inventory.queue
    if resource is None:
        return failed(name, f"no {QUEUE_ID} in the stack")
    problem = resource_problem(resource)
    if problem:
        return failed(name, problem)
    try:
        attributes = sqs.get_queue_attributes(
            QueueUrl=resource.physical_id,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    except (ClientError, BotoCoreError) as exc:
        return failed(name, f"{resource.physical_id}: {describe_error(exc)}")
    queue = resource.physical_id.rsplit("/", 1)[-1]
    return passed(
        name,
        f"{queue}: {attributes.get('ApproximateNumberOfMessages', '?')} messages,"
        f" {attributes.get('ApproximateNumberOfMessagesNotVisible', '?')} in flight",
    )


# --- running them ------------------------------------------------------------------------------


@dataclass
class Clients:
    cloudformation: Any
    lambda_: Any
    scheduler: Any
    cloudwatch: Any
    sqs: Any
    # The client for the invocations, given the read timeout they need.
    invoker: Callable[[float], Any]

    @classmethod
    def for_session(cls, session: boto3.Session) -> Clients:
        def make(service: str, read_timeout: float = READ_TIMEOUT) -> Any:
            # a service name that is not a literal matches none of boto3-stubs' overloads
            return session.client(service, config=client_config(read_timeout))  # type: ignore[call-overload]

        return cls(
            cloudformation=make("cloudformation"),
            lambda_=make("lambda"),
            scheduler=make("scheduler"),
            cloudwatch=make("cloudwatch"),
            sqs=make("sqs"),
            invoker=lambda read_timeout: make("lambda", read_timeout),
        )


def run_checks(clients: Clients, inventory: Inventory) -> list[Check]:
    checks = [check_stack(inventory)]
    function_check, function = check_function(clients.lambda_, inventory)
    checks.append(function_check)
    read_timeout = max(MIN_INVOKE_READ_TIMEOUT, (function.timeout_seconds + 5) if function else 0)
    checks += check_invocations(clients.invoker(read_timeout) if function else None, function)
    checks += check_schedules(clients.scheduler, inventory, function)
    checks += check_alarms(clients.cloudwatch, inventory)
    checks.append(check_queue(clients.sqs, inventory))
    return checks


def report(checks: Sequence[Check], out: TextIO) -> int:
    width = max(len(c.name) for c in checks)
    for check in checks:
        out.write(check.line(width) + "\n")
    failures = sum(1 for c in checks if not c.ok)
    if failures:
        out.write(f"smoke: FAILED: {failures} of {len(checks)} checks failed\n")
        return 1
    out.write(f"smoke: PASSED: all {len(checks)} checks\n")
    return 0


SKIPPED = 3


def main(argv: Iterable[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test a deployed outbox-relay stack.")
    parser.add_argument("--stack", required=True, help="the stack name sam deploy used")
    parser.add_argument("--region", help="default: the AWS CLI's (AWS_REGION, AWS_DEFAULT_REGION, profile)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.stack.strip():
        parser.error("--stack must not be empty")
    try:
        session = boto3.Session(region_name=args.region)
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        err.write(f"smoke: error: {describe_error(exc)}\n")
        return 1
    if credentials is None:
        out.write(
            "smoke: SKIPPED: no AWS credentials configured, nothing was checked"
            " (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)\n"
        )
        return SKIPPED
    region = session.region_name
    if not region:
        err.write("smoke: error: no AWS region: pass --region (make smoke REGION=...) or set AWS_REGION\n")
        return 1
    try:
        account = session.client("sts", config=client_config()).get_caller_identity()["Account"]
    except (ClientError, BotoCoreError) as exc:
        err.write(f"smoke: error: {describe_error(exc)}\n")
        return 1
    where = f"{args.stack} in {region}, account {account}"
    if os.environ.get("AWS_ENDPOINT_URL"):  # e.g. a shell that ran `eval "$(scripts/local-stack env)"`
        where += f", endpoint {os.environ['AWS_ENDPOINT_URL']} (AWS_ENDPOINT_URL: not AWS itself)"
    try:
        clients = Clients.for_session(session)
        inventory = discover(clients.cloudformation, args.stack)
    except StackNotFound:
        err.write(f"smoke: FAILED: stack {args.stack} not found in {region} (account {account})\n")
        return 1
    except (ClientError, BotoCoreError) as exc:
        err.write(f"smoke: error: {where}: {describe_error(exc)}\n")
        return 1
    out.write(f"smoke: {where}\n")
    return report(run_checks(clients, inventory), out)


if __name__ == "__main__":
    sys.exit(main())
