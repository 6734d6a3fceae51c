"""scripts/smoke.py, the post-deploy smoke test (``make smoke STACK=<name>``), against moto.

Only 127.0.0.1 is ever called.  What moto 5.2.5 can and cannot stand in for:

- its CloudFormation creates the function, the queue and the role, but not
  ``AWS::Scheduler::Schedule`` nor ``AWS::CloudWatch::Alarm``: it lists those with empty ids.
  So the end-to-end run of the script against a moto stack must report the schedules and alarms
  missing; the passing runs create them directly in moto and add them to what ``discover`` found,
  as CloudFormation would list them.
- its Lambda runs code only in Docker.  Without Docker (this machine) an invoke answers
  ``FunctionError: Handled`` with "error running docker"; with ``use_docker: false`` it answers
  from a queue of results, which the tests fill with what the real handler answered on the local
  stack.  An unhandled error, a timeout or a throttle cannot be made to happen in moto:
  botocore's Stubber plays those.

Everything that creates AWS resources runs on a moto server of this module's own, never on the
shared one at 127.0.0.1:5000: ``use_docker`` is server-wide, and moto keeps every model instance
for ``/moto-api/data.json`` (the local stack's health check), which fails with a 500 for as long
as a Docker-mode Lambda function was ever created on the server (until ``/moto-api/reset``).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from tests import support
from tests.unit.test_template import resources

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "smoke.py"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's


def _load_smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outbox_relay_smoke", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


smoke = _load_smoke()


# --- running the script as a user would ------------------------------------------------------------


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any AWS settings: no credentials, config files or metadata service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("STACK", "REGION")}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def moto_env(home: Path, endpoint: str) -> dict[str, str]:
    return bare_env(
        home,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=endpoint,
    )


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


def row(out: list[str], name: str) -> str:
    """The one PASS or FAIL line of the check called ``name``, its padding squeezed to one space."""
    (line,) = [line for line in out if line[:4] in ("PASS", "FAIL") and line[6:].startswith(name + "  ")]
    return " ".join(line.split())


# --- a stack in moto -------------------------------------------------------------------------------


def template() -> dict[str, Any]:
    """What moto's CloudFormation can hold of the deployed stack, plus one alarm and one schedule
    it will list with empty ids."""
    return {
        "Resources": {
            "RelayFunctionRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {"AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": []}},
            },
            "RelayFunction": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "FunctionName": {"Fn::Sub": "${AWS::StackName}-relay"},
                    "Runtime": "python3.13",
                    "Architectures": ["arm64"],
                    "Handler": "outbox_relay.handler.lambda_handler",
                    "MemorySize": 256,
                    "Timeout": 60,
                    "Role": {"Fn::GetAtt": ["RelayFunctionRole", "Arn"]},
                    "Code": {"ZipFile": "def lambda_handler(event, context):\n    return event\n"},
                },
            },
            "DeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "LagAlarm": {
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "Namespace": "OutboxRelay",
                    "MetricName": "OldestPendingAgeSeconds",
                    "Statistic": "Maximum",
                    "Period": 60,
                    "EvaluationPeriods": 5,
                    "Threshold": 300,
                    "ComparisonOperator": "GreaterThanThreshold",
                },
            },
            "RelayFunctionSchedule": {
                "Type": "AWS::Scheduler::Schedule",
                "Properties": {
                    "ScheduleExpression": "rate(1 minute)",
                    "FlexibleTimeWindow": {"Mode": "OFF"},
                    "Target": {
                        "Arn": {"Fn::GetAtt": ["RelayFunction", "Arn"]},
                        "RoleArn": {"Fn::GetAtt": ["RelayFunctionRole", "Arn"]},
                        "Input": '{"source": "aws.scheduler"}',
                    },
                },
            },
        }
    }


def create_stack(endpoint: str) -> str:
    stack = f"smoke-{uuid.uuid4().hex[:10]}"
    cfn = boto3.client("cloudformation", endpoint_url=endpoint, region_name=REGION)
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template()))
    status = cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    assert status == "CREATE_COMPLETE", status
    return stack


def add_schedules_and_alarms(
    endpoint: str, stack: str, relay_state: str = "ENABLED", janitor_target: str | None = None
) -> tuple[list[Any], list[Any]]:
    """Create in moto what CloudFormation would create for the template's schedules and alarms, named
    the way it names them; the stack resources it would list for them."""
    scheduler = boto3.client("scheduler", endpoint_url=endpoint, region_name=REGION)
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint, region_name=REGION)
    function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{stack}-relay"
    role = f"arn:aws:iam::{ACCOUNT}:role/{stack}-RelayFunctionScheduleRole"
    schedules = []
    for logical_id, expression, payload, state, target in (
        ("RelayFunctionSchedule", "rate(1 minute)", '{"source": "aws.scheduler"}', relay_state, None),
        (
            "RelayFunctionJanitor",
            "rate(15 minutes)",
            '{"source": "aws.scheduler", "action": "janitor"}',
            "ENABLED",
            janitor_target,
        ),
    ):
        name = f"{stack}-{logical_id}-{uuid.uuid4().hex[:12].upper()}"
        scheduler.create_schedule(
            Name=name,
            ScheduleExpression=expression,
            State=state,
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={"Arn": target or function_arn, "RoleArn": role, "Input": payload},
        )
        schedules.append(smoke.Resource(logical_id, name, "CREATE_COMPLETE"))
    alarms = []
    for logical_id in smoke.ALARM_IDS:
        name = f"{stack}-{logical_id}-{uuid.uuid4().hex[:12].upper()}"
        actions = (
            {"AlarmActions": [f"arn:aws:sns:{REGION}:{ACCOUNT}:pager"]} if logical_id == "LagAlarm" else {}
        )
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="OutboxRelay",
            MetricName=logical_id,
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=0,
            ComparisonOperator="GreaterThanThreshold",
            **actions,
        )
        alarms.append(smoke.Resource(logical_id, name, "CREATE_COMPLETE"))
    return schedules, alarms


# --- a private moto whose Lambda answers from a queue of results -------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201), response.status


@pytest.fixture(scope="module")
def simple_lambda_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server of this module's own (``use_docker: false`` is server-wide configuration)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, log.read_text()
                time.sleep(0.2)
        else:
            pytest.fail(f"moto did not answer on {url}: {log.read_text()}")
        _post(f"{url}/moto-api/config", {"lambda": {"use_docker": False}})
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def private_moto(simple_lambda_moto: str) -> str:
    """The private moto, emptied (its queue of Lambda results too)."""
    _post(f"{simple_lambda_moto}/moto-api/reset", {})
    return simple_lambda_moto


def queue_lambda_answers(endpoint: str, *answers: dict[str, Any]) -> None:
    _post(
        f"{endpoint}/moto-api/static/lambda-simple/response",
        {"results": [json.dumps(a) for a in answers], "region": REGION, "account_id": ACCOUNT},
    )


@pytest.fixture
def real_answers(database: support.Database, invoke: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the real handler answers ``status`` and ``dry_run`` with, on the local stack."""
    database.insert(support.backlog(12, 3))
    status, dry_run = invoke({"action": "status"}), invoke({"dry_run": True})
    assert status["ok"] and status["pending"] == 12, status
    assert dry_run["ok"] and dry_run["would_publish"] > 0, dry_run
    return status, dry_run


def checked(endpoint: str, stack: str, schedules: list[Any], alarms: list[Any]) -> tuple[list[Any], int, str]:
    with pytest.MonkeyPatch.context() as env:  # the script's own clients, configured by the environment
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        clients = smoke.Clients.for_session(boto3.Session(region_name=REGION))
        inventory = smoke.discover(clients.cloudformation, stack)
        # moto's CloudFormation creates neither (if this fails, it learned to: drop these two lines).
        assert inventory.schedules == [] and inventory.alarms == []
        inventory.schedules, inventory.alarms = schedules, alarms
        checks = smoke.run_checks(clients, inventory)  # makes the invoke client: still in the context
    out = io.StringIO()
    code = smoke.report(checks, out)
    print(out.getvalue())
    return checks, code, out.getvalue()


def by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


# --- the tests ---------------------------------------------------------------------------------------


def test_without_credentials_it_says_skipped_in_one_line(tmp_path: Path) -> None:
    result = run_script(bare_env(tmp_path), "--stack", "outbox-relay-dev", "--region", "eu-west-1")
    assert result.returncode == 3, result  # not 0: nothing was checked
    assert result.stderr == ""
    (line,) = lines(result)
    assert line.startswith("smoke: SKIPPED: no AWS credentials configured"), line
    assert "PASS" not in line


def test_make_smoke_needs_a_stack_and_passes_it_on(tmp_path: Path) -> None:
    def make(*args: str) -> subprocess.CompletedProcess[str]:
        # -o: never (re)install the venv from here.
        return subprocess.run(
            ["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", "smoke", *args],
            env=bare_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    usage = make()
    assert usage.returncode != 0
    assert "usage: make smoke STACK=<stack name>" in usage.stderr
    skipped = make("STACK=outbox-relay-dev", "REGION=eu-west-1")
    assert skipped.returncode != 0, skipped  # make reports the script's 3 as its own failure
    assert skipped.stdout.startswith("smoke: SKIPPED")


def test_a_missing_stack_is_one_line_and_exit_1(private_moto: str, tmp_path: Path) -> None:
    result = run_script(moto_env(tmp_path, private_moto), "--stack", f"no-such-{uuid.uuid4().hex[:8]}")
    assert result.returncode == 1
    (line,) = lines(result)
    assert " not found in us-east-1 (account 123456789012)" in line, line


def test_no_region_and_no_endpoint_are_one_line_each(private_moto: str, tmp_path: Path) -> None:
    env = moto_env(tmp_path, private_moto)
    del env["AWS_DEFAULT_REGION"]
    no_region = run_script(env, "--stack", "x")
    unreachable = run_script(moto_env(tmp_path, f"http://127.0.0.1:{_free_port()}"), "--stack", "x")
    for result in (no_region, unreachable):
        assert result.returncode == 1
        assert len(lines(result)) == 1 and "Traceback" not in result.stderr, lines(result)
    assert "no AWS region" in no_region.stderr
    assert "Could not connect to the endpoint URL" in unreachable.stderr


def test_a_moto_stack_end_to_end_reports_what_moto_lacks(
    private_moto: str, real_answers: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    """The script as a user runs it, on a stack in moto: the stack, the function, its answers (the
    real handler's) and the queue pass; the schedules and alarms, which moto's CloudFormation does
    not create, fail."""
    stack = create_stack(private_moto)
    queue_lambda_answers(private_moto, *real_answers)

    result = run_script(moto_env(tmp_path, private_moto), "--stack", stack)

    print(result.stdout, result.stderr)
    assert result.returncode == 1 and result.stderr == ""
    out = lines(result)
    endpoint = f"endpoint {private_moto} (AWS_ENDPOINT_URL: not AWS itself)"
    assert out[0] == f"smoke: {stack} in us-east-1, account {ACCOUNT}, {endpoint}"
    assert row(out, "stack").startswith(f"PASS stack {stack}: CREATE_COMPLETE, 3 resources")
    # (moto's CloudFormation drops Architectures: x86_64)
    assert row(out, "function").startswith(f"PASS function {stack}-relay: Active, python3.13 ")
    assert row(out, "function").endswith(", 256 MB, timeout 60 s")
    assert row(out, "invoke status").startswith("PASS invoke status pending 12 (oldest ")
    assert row(out, "invoke dry_run").startswith("PASS invoke dry_run would publish 12 (pending 12,")
    for name in ("schedule relay", "schedule janitor"):
        assert row(out, name).startswith("FAIL") and "none in the stack: " in row(out, name)
    for alarm in smoke.ALARM_IDS:
        assert row(out, f"alarm {alarm}").startswith("FAIL") and row(out, f"alarm {alarm}").endswith(
            "not in the stack"
        )
    assert row(out, "dead-letter queue").startswith(f"PASS dead-letter queue {stack}-DeadLetterQueue-")
    assert row(out, "dead-letter queue").endswith(": 0 messages, 0 in flight")
    assert out[-1] == "smoke: FAILED: 12 of 17 checks failed"


def test_a_healthy_deployment_passes_every_check(
    private_moto: str, real_answers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    stack = create_stack(private_moto)
    schedules, alarms = add_schedules_and_alarms(private_moto, stack)
    queue_lambda_answers(private_moto, *real_answers)

    checks, code, out = checked(private_moto, stack, schedules, alarms)

    assert code == 0 and all(c.ok for c in checks), out
    assert out.splitlines()[-1] == "smoke: PASSED: all 17 checks"
    found = by_name(checks)
    assert "pending 12 (oldest" in found["invoke status"].detail
    topic = real_answers[0]["topics"][0]["topic"]
    assert f"dead 0, published 0; topics: {topic} (12 pending, 0 dead)" in found["invoke status"].detail
    assert found["invoke dry_run"].detail.startswith(f"would publish {real_answers[1]['would_publish']} ")
    assert found["schedule relay"].detail == f"{schedules[0].physical_id}: ENABLED, rate(1 minute)"
    assert found["schedule janitor"].detail == f"{schedules[1].physical_id}: ENABLED, rate(15 minutes)"
    assert found["alarm LagAlarm"].detail.endswith(": OK; actions: pager")  # moto's alarms start OK
    assert found["alarm FunctionErrorsAlarm"].detail.endswith(": OK; actions: none")


def test_a_disabled_schedule_and_a_deleted_alarm_fail(
    private_moto: str, real_answers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    stack = create_stack(private_moto)
    schedules, alarms = add_schedules_and_alarms(private_moto, stack, relay_state="DISABLED")
    deleted = alarms[1]
    boto3.client("cloudwatch", endpoint_url=private_moto, region_name=REGION).delete_alarms(
        AlarmNames=[deleted.physical_id]
    )
    queue_lambda_answers(private_moto, *real_answers)

    checks, code, out = checked(private_moto, stack, schedules, alarms)

    assert code == 1
    assert {c.name for c in checks if not c.ok} == {"schedule relay", f"alarm {deleted.logical_id}"}, out
    found = by_name(checks)
    assert found["schedule relay"].line().startswith("FAIL  schedule relay")
    assert found["schedule relay"].detail.endswith(": DISABLED, rate(1 minute): the relay does not run")
    assert found[f"alarm {deleted.logical_id}"].detail == (
        f"{deleted.physical_id} is in the stack but not in CloudWatch"
    )
    assert out.splitlines()[-1] == "smoke: FAILED: 2 of 17 checks failed"


def test_a_schedule_aimed_at_another_function_fails(
    private_moto: str, real_answers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    other = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:someone-else"
    stack = create_stack(private_moto)
    schedules, alarms = add_schedules_and_alarms(private_moto, stack, janitor_target=other)
    queue_lambda_answers(private_moto, *real_answers)

    checks, code, _ = checked(private_moto, stack, schedules, alarms)

    assert code == 1
    (failure,) = [c for c in checks if not c.ok]
    assert failure.name == "schedule janitor" and failure.detail.endswith(
        f"targets {other}, not {stack}-relay"
    )


@pytest.mark.parametrize("janitor_schedule_targets", ["janitor", "relay"])
def test_the_janitor_schedule_must_target_the_stacks_janitor_function(
    private_moto: str, janitor_schedule_targets: str
) -> None:
    """Since the janitor has a function of its own, its schedule must run that one, not the relay."""
    stack = f"smoke-{uuid.uuid4().hex[:10]}"
    functions = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function"
    relay = smoke.Function(f"{stack}-relay", f"{functions}:{stack}-relay", 60)
    target = f"{functions}:{stack}-janitor" if janitor_schedule_targets == "janitor" else None
    schedules, _ = add_schedules_and_alarms(private_moto, stack, janitor_target=target)
    inventory = smoke.Inventory(stack, "CREATE_COMPLETE", 0, schedules=schedules)
    inventory.janitor = smoke.Resource(smoke.JANITOR_FUNCTION_ID, f"{stack}-janitor", "CREATE_COMPLETE")
    scheduler = boto3.client("scheduler", endpoint_url=private_moto, region_name=REGION)

    found = by_name(smoke.check_schedules(scheduler, inventory, relay))

    assert found["schedule relay"].ok, found["schedule relay"]
    janitor = found["schedule janitor"]
    if janitor_schedule_targets == "janitor":
        assert janitor.ok and janitor.detail.endswith(": ENABLED, rate(15 minutes)"), janitor
    else:
        assert not janitor.ok and janitor.detail.endswith(f"targets {relay.arn}, not {stack}-janitor")


def test_answers_swapped_by_the_function_are_not_taken_for_the_right_ones(
    private_moto: str, real_answers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    stack = create_stack(private_moto)
    schedules, alarms = add_schedules_and_alarms(private_moto, stack)
    queue_lambda_answers(private_moto, real_answers[1], real_answers[0])

    checks, code, _ = checked(private_moto, stack, schedules, alarms)

    assert code == 1
    assert {c.name for c in checks if not c.ok} == {"invoke status", "invoke dry_run"}


# --- what an invocation's answer means (Stubber: moto cannot produce these) -------------------------------


def _payload(body: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(body), len(body))


def _invoked(*responses: dict[str, Any] | tuple[str, str]) -> list[Any]:
    client = boto3.client(
        "lambda", region_name=REGION, endpoint_url="http://127.0.0.1:9"
    )  # Stubber: never sent
    with Stubber(client) as stub:
        for response in responses:
            if isinstance(response, tuple):
                code, message = response
                stub.add_client_error(
                    "invoke", service_error_code=code, service_message=message, http_status_code=429
                )
            else:
                stub.add_response(
                    "invoke",
                    response,
                    {"FunctionName": "stack-relay", "InvocationType": "RequestResponse", "Payload": ANY},
                )
        checks: list[Any] = smoke.check_invocations(client, smoke.Function("stack-relay", "arn", 60))
        stub.assert_no_pending_responses()
    return checks


def _ok(answer: dict[str, Any]) -> dict[str, Any]:
    return {"StatusCode": 200, "Payload": _payload(json.dumps(answer).encode())}


STATUS = {"ok": True, "action": "status", "pending": 0, "oldest_pending_age_seconds": 0.0, "dead": 0}
DRY_RUN = {"ok": True, "dry_run": True, "would_publish": 0, "pending": 0, "stopped_by": "dry_run"}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": _payload(
                    b'{"errorType": "Runtime.ImportModuleError", "errorMessage": "Unable to import module'
                    b" 'outbox_relay.handler': No module named 'pymysql'\", \"stackTrace\": []}"
                ),
            },
            "function error (Unhandled): Runtime.ImportModuleError: Unable to import module"
            " 'outbox_relay.handler': No module named 'pymysql'",
        ),
        (
            {
                "StatusCode": 200,
                "FunctionError": "Unhandled",
                "Payload": _payload(
                    b'{"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 60.00 seconds"}'
                ),
            },
            "function error (Unhandled): Sandbox.Timedout: Task timed out after 60.00 seconds",
        ),
        (
            {
                "StatusCode": 200,
                "FunctionError": "Handled",
                "Payload": _payload(b"error running docker: no socket"),
            },
            "function error (Handled): error running docker: no socket",
        ),
        (
            _ok({"ok": False, "error": "status: database error: (2003) Can't connect to MySQL server"}),
            "ok is false: status: database error: (2003) Can't connect to MySQL server",
        ),
        ({"StatusCode": 200, "Payload": _payload(b"Simple Lambda happy path OK")}, "not a JSON object"),
        (_ok({"ok": True, "published": 3, "stopped_by": "drained"}), "not a status answer"),
    ],
)
def test_a_failed_status_invocation_says_why_in_one_line(response: dict[str, Any], expected: str) -> None:
    status, dry_run = _invoked(response, _ok(DRY_RUN))
    assert not status.ok and status.detail.startswith(expected), status.detail
    assert "\n" not in status.line()
    assert dry_run.ok, dry_run


def test_a_dry_run_that_was_not_dry_fails() -> None:
    # An ok answer without "dry_run": the function ran for real (and may have published).
    status, dry_run = _invoked(_ok(STATUS), _ok({"ok": True, "published": 5, "stopped_by": "drained"}))
    assert status.ok
    assert not dry_run.ok and dry_run.detail.startswith("the answer is not a dry run's"), dry_run.detail


def test_a_throttled_invocation_fails_with_the_likely_cause() -> None:
    status, dry_run = _invoked(("TooManyRequestsException", "Rate Exceeded."), _ok(DRY_RUN))
    assert not status.ok
    assert status.detail.startswith("TooManyRequestsException: Rate Exceeded. (throttled: every reserved")
    assert dry_run.ok


def test_no_function_means_no_invocation_and_two_failures() -> None:
    checks = smoke.check_invocations(None, None)
    assert [(c.name, c.ok, c.detail) for c in checks] == [
        ("invoke status", False, "not invoked: the function check failed"),
        ("invoke dry_run", False, "not invoked: the function check failed"),
    ]


# --- the names it looks for are the template's ------------------------------------------------------


def test_the_expected_resources_are_those_of_the_transformed_template() -> None:
    assert set(resources("AWS::CloudWatch::Alarm")) == set(smoke.ALARM_IDS)
    assert set(resources("AWS::Lambda::Function")) == {smoke.FUNCTION_ID, smoke.JANITOR_FUNCTION_ID}
    # The schedules' own dead-letter queue is watched through ScheduleDeadLetterAlarm (checked
    # with the alarms); the smoke test reads the relay's.
    assert set(resources("AWS::SQS::Queue")) == {smoke.QUEUE_ID, "ScheduleDeadLetterQueue"}
    roles = [
        smoke.schedule_role({"Target": {"Input": s["Properties"]["Target"]["Input"]}})
        for s in resources("AWS::Scheduler::Schedule").values()
    ]
    assert sorted(roles) == sorted(smoke.SCHEDULE_ROLES)


def test_discover_reads_every_page_of_a_real_looking_stack() -> None:
    cfn = boto3.client(
        "cloudformation", region_name=REGION, endpoint_url="http://127.0.0.1:9"
    )  # Stubber: never sent

    def summary(
        logical_id: str, kind: str, physical_id: str, status: str = "CREATE_COMPLETE"
    ) -> dict[str, Any]:
        return {
            "LogicalResourceId": logical_id,
            "PhysicalResourceId": physical_id,
            "ResourceType": kind,
            "ResourceStatus": status,
            "LastUpdatedTimestamp": "2026-01-01T00:00:00Z",
        }

    with Stubber(cfn) as stub:
        stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": "dev",
                        "StackStatus": "UPDATE_ROLLBACK_COMPLETE",
                        "CreationTime": "2026-01-01T00:00:00Z",
                    }
                ]
            },
            {"StackName": "dev"},
        )
        stub.add_response(
            "list_stack_resources",
            {
                "StackResourceSummaries": [
                    summary("RelayFunction", "AWS::Lambda::Function", "dev-relay"),
                    summary(
                        "RelayFunctionSchedule", "AWS::Scheduler::Schedule", "dev-RelayFunctionSchedule-A1"
                    ),
                    summary("LagAlarm", "AWS::CloudWatch::Alarm", "dev-LagAlarm-B2"),
                ],
                "NextToken": "page2",
            },
            {"StackName": "dev"},
        )
        stub.add_response(
            "list_stack_resources",
            {
                "StackResourceSummaries": [
                    summary(
                        "DeadLetterQueue", "AWS::SQS::Queue", "https://sqs.eu-west-1.amazonaws.com/1/dev-q"
                    ),
                    summary("RelayFunctionJanitor", "AWS::Scheduler::Schedule", "", "CREATE_FAILED"),
                    summary("RelayLogGroup", "AWS::Logs::LogGroup", "/aws/lambda/dev-relay"),
                ]
            },
            {"StackName": "dev", "NextToken": "page2"},
        )
        inventory = smoke.discover(cfn, "dev")

    assert inventory.resource_count == 6
    assert inventory.function == smoke.Resource("RelayFunction", "dev-relay", "CREATE_COMPLETE")
    assert inventory.queue is not None and inventory.queue.physical_id.endswith("/dev-q")
    assert [s.logical_id for s in inventory.schedules] == ["RelayFunctionSchedule", "RelayFunctionJanitor"]
    assert [a.physical_id for a in inventory.alarms] == ["dev-LagAlarm-B2"]
    stack_check = smoke.check_stack(inventory)
    assert not stack_check.ok and stack_check.detail.endswith("the last deploy was rolled back")
    assert (
        smoke.resource_problem(inventory.schedules[1])
        == "RelayFunctionJanitor has no physical id (CREATE_FAILED)"
    )
