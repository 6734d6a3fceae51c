"""Each alarm's metric, emitted by the real handler (in-process, decorators and all) in a run that
should trip it, read back from the EMF line Powertools writes: what CloudWatch would turn into the
metric the alarm watches (tests/unit/test_alarms.py checks the alarms name these metrics, in this
namespace, with this dimension).  And the runs that must not count: a failed run emits no lag gauge
(no data, which LagAlarm treats as breaching), a dry run or an operator action no RunSucceeded.

Not emitted by the handler, so not here: AWS/Lambda Errors and AsyncEventsDropped, AWS/SQS queue
depth (Lambda and SQS publish those)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from outbox_relay import handler
from outbox_relay.cli import LocalContext
from outbox_relay.ports import MetricName
from tests import support
from tests.conftest import make_topics
from tests.unit.deploy_model import template

JANITOR_TICK = {"source": "aws.scheduler", "action": "janitor"}  # the janitor schedule's input
LAG_THRESHOLD = int(template()["Parameters"]["LagAlarmThresholdSeconds"]["Default"])
LAG_GAUGES = {MetricName.PENDING_COUNT, MetricName.OLDEST_PENDING_AGE_SECONDS}
RUN_OUTCOMES = {MetricName.RUN_SUCCEEDED, MetricName.RUN_FAILED}


def closed_port() -> str:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def emitted(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The one EMF line the invocation wrote, checked for the namespace and dimension the alarms
    use; as {metric: value (one value) or values, "_units": {metric: unit}}."""
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    (blob,) = blobs
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "OutboxRelay" and directive["Dimensions"] == [["service"]]
    assert blob["service"] == handler.SERVICE
    metrics: dict[str, Any] = {}
    for metric in directive["Metrics"]:
        values = blob[metric["Name"]]
        metrics[metric["Name"]] = values[0] if isinstance(values, list) and len(values) == 1 else values
    metrics["_units"] = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    return metrics


@pytest.fixture
def janitor(relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Call JanitorFunction's entry point (handler.janitor_handler) with this test's environment."""

    def call(event: Any = None, **env: str) -> dict[str, Any]:
        for key, value in {**relay_env, **env}.items():
            monkeypatch.setenv(key, value)
        result: dict[str, Any] = handler.janitor_handler(
            JANITOR_TICK if event is None else event, LocalContext(60)
        )
        return result

    return call


@pytest.fixture
def no_kafka_no_sqs() -> dict[str, str]:
    """An environment override pointing Kafka, SQS and every AWS endpoint at closed ports."""
    port = closed_port()
    return {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "DLQ_QUEUE_URL": f"http://127.0.0.1:{port}/000000000000/nowhere",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }


# --- LagAlarm and NoSuccessfulRunAlarm --------------------------------------------------------------


def test_lag_alarm_a_run_that_leaves_an_old_backlog_emits_its_age(
    database: support.Database, topics: support.Topics, invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    make_topics(topics, "order")
    database.insert(support.backlog(12, 3))
    old = LAG_THRESHOLD + 60
    database.query(f"UPDATE outbox SET created_at = UTC_TIMESTAMP(6) - INTERVAL {old} SECOND")
    capsys.readouterr()

    result = invoke({"max_events": 2})  # a relay that cannot keep up

    assert result["ok"] and result["published"] == 2 and result["pending"] == 10, result
    metrics = emitted(capsys)
    age = metrics[MetricName.OLDEST_PENDING_AGE_SECONDS]
    assert age > LAG_THRESHOLD and old <= age < old + 30, age
    assert metrics["_units"][MetricName.OLDEST_PENDING_AGE_SECONDS] == "Seconds"
    assert metrics[MetricName.PENDING_COUNT] == 10
    assert metrics[MetricName.RUN_SUCCEEDED] == 1 and MetricName.RUN_FAILED not in metrics
    assert metrics[MetricName.PUBLISHED] == 2


def test_database_down_no_lag_gauges_and_a_failed_run(
    database: support.Database, invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lag is unknown: the gauges are absent (LagAlarm breaches on no data), not 0 (which
    would clear it), and the run counts as failed (NoSuccessfulRunAlarm)."""
    database.insert(support.backlog(5, 2))
    capsys.readouterr()

    result = invoke(OUTBOX_DB_PORT=closed_port())

    assert result["ok"] is False and result["stopped_by"] == "database_unavailable", result
    metrics = emitted(capsys)
    assert not LAG_GAUGES & set(metrics), metrics
    assert metrics[MetricName.RUN_FAILED] == 1 and MetricName.RUN_SUCCEEDED not in metrics


def test_database_down_during_a_dry_run_no_lag_gauges_and_no_run_outcome(
    database: support.Database, invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    result = invoke({"dry_run": True}, OUTBOX_DB_PORT=closed_port())

    assert result["ok"] is False, result
    metrics = emitted(capsys)
    assert not (LAG_GAUGES | RUN_OUTCOMES) & set(metrics), metrics
    assert metrics[MetricName.OPERATOR_ACTIONS] == 1 and metrics[MetricName.OPERATOR_ACTIONS_FAILED] == 1


@pytest.mark.parametrize("event", [{"dry_run": True}, {"action": "status"}], ids=["dry_run", "status"])
def test_no_successful_run_alarm_dry_runs_and_operator_actions_are_not_relay_successes(
    database: support.Database, invoke: Any, capsys: pytest.CaptureFixture[str], event: dict[str, Any]
) -> None:
    """What the smoke test invokes: it must not postpone NoSuccessfulRunAlarm."""
    database.insert(support.backlog(4, 2))
    capsys.readouterr()

    result = invoke(event)

    assert result["ok"], result
    metrics = emitted(capsys)
    assert not RUN_OUTCOMES & set(metrics), metrics
    assert MetricName.PUBLISHED not in metrics and MetricName.RUN_DURATION_MS not in metrics
    assert metrics[MetricName.OPERATOR_ACTIONS] == 1
    if event.get("dry_run"):  # a dry run measured the lag: a true reading, emitted
        assert metrics[MetricName.PENDING_COUNT] == 4


# --- DeadLetteredAlarm and DeadRowsAlarm -----------------------------------------------------------


def test_dead_letters_then_the_dead_rows_the_janitor_counts(
    database: support.Database,
    topics: support.Topics,
    dlq: support.Queue,
    invoke: Any,
    janitor: Callable[..., dict[str, Any]],
    no_kafka_no_sqs: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_topics(topics, "order")
    database.insert(
        [
            support.Event("order", "order-1", "Broken", b"{not json", seq=1),
            support.Event("order", "order-2", "Fine", b'{"ok": true}', seq=1),
        ]
    )
    capsys.readouterr()

    run = invoke()

    assert run["ok"] and run["dead_lettered"] == 1 and run["published"] == 1, run
    metrics = emitted(capsys)
    assert metrics[MetricName.DEAD_LETTERED] == 1 and metrics[MetricName.RUN_SUCCEEDED] == 1
    assert len(dlq.messages()) == 1

    # The janitor function, with Kafka, SQS and every AWS endpoint unreachable: it needs none.
    report = janitor(**no_kafka_no_sqs)

    assert report["ok"] and report["action"] == "janitor" and report["dead"] == 1, report
    metrics = emitted(capsys)
    assert metrics[MetricName.DEAD_COUNT] == 1 and metrics["_units"][MetricName.DEAD_COUNT] == "Count"
    assert metrics[MetricName.JANITOR_SUCCEEDED] == 1
    assert not (RUN_OUTCOMES | {MetricName.JANITOR_FAILED}) & set(metrics), metrics

    # Redriven (here: published by hand), the DEAD rows are gone and the next tick says 0.
    database.query(
        "UPDATE outbox SET status = 'PUBLISHED', published_at = UTC_TIMESTAMP(6) WHERE status = 'DEAD'"
    )
    assert janitor(**no_kafka_no_sqs)["dead"] == 0
    assert emitted(capsys)[MetricName.DEAD_COUNT] == 0


# --- JanitorNotSucceedingAlarm ------------------------------------------------------------------------


def test_janitor_failure_emits_janitor_failed_and_no_dead_count(
    database: support.Database, janitor: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    result = janitor(OUTBOX_DB_PORT=closed_port())

    assert result["ok"] is False and result["error"].startswith("janitor: "), result
    metrics = emitted(capsys)
    assert metrics[MetricName.JANITOR_FAILED] == 1
    assert not {MetricName.JANITOR_SUCCEEDED, MetricName.DEAD_COUNT, *RUN_OUTCOMES} & set(metrics), metrics


def test_the_janitor_run_by_hand_on_the_relay_function_is_an_operator_action(
    database: support.Database, invoke: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator may still run the janitor on the relay function ({"action": "janitor"}): it
    reports the DEAD rows, but it is no janitor success (that would hide a broken janitor
    function from JanitorNotSucceedingAlarm) and no relay run."""
    capsys.readouterr()
    assert invoke({"action": "janitor"})["ok"]
    metrics = emitted(capsys)
    assert metrics[MetricName.OPERATOR_ACTIONS] == 1 and metrics[MetricName.DEAD_COUNT] == 0
    assert MetricName.JANITOR_SUCCEEDED not in metrics and MetricName.JANITOR_FAILED not in metrics
    assert not RUN_OUTCOMES & set(metrics), metrics


@pytest.mark.parametrize(
    "event",
    [{"source": "aws.scheduler"}, {"dry_run": True}, {"action": "status"}],
    ids=["tick", "dry", "status"],
)
def test_the_janitor_function_runs_nothing_but_the_janitor(
    database: support.Database,
    janitor: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    event: dict[str, Any],
) -> None:
    database.insert(support.backlog(3, 1))
    capsys.readouterr()

    result = janitor(event)

    assert result == {
        "ok": False,
        "error": 'this function runs only the janitor: invoke it with {"action": "janitor"}',
    }
    assert database.status_counts() == {"PENDING": 3}
    metrics = emitted(capsys)
    assert metrics[MetricName.OPERATOR_ACTIONS_FAILED] == 1
    assert not {MetricName.JANITOR_SUCCEEDED, MetricName.JANITOR_FAILED, *RUN_OUTCOMES} & set(metrics)
