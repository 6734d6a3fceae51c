"""The Lambda entry point: adapts the event and context to the relay core, nothing more.

Handler: ``outbox_relay.handler.lambda_handler``.  Accepts an EventBridge scheduled event or a
manual JSON payload: relay overrides (``batch_size``, ``max_events``, ``dry_run``,
``poll_window_seconds``), or an ``action`` (``janitor``, ``status``, ``redrive`` with ``ids``),
and returns the JSON summary.  A bad payload or configuration returns ``{"ok": false, "error": "<one
line>"}`` having touched nothing.

``outbox_relay.handler.janitor_handler`` is the janitor function's: the same, for the ``janitor``
action only (that function has the database secret and nothing else: no SQS, no MSK).

Metrics (names in :class:`~outbox_relay.ports.MetricName`): a relay run emits its counts and
``RunSucceeded`` or ``RunFailed``; the janitor ``JanitorSucceeded`` (with ``DeadCount``) or
``JanitorFailed``; dry runs, ``status`` and ``redrive`` count as ``OperatorActions`` (and
``OperatorActionsFailed``), never as relay runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from .admin_dead import DeadRowsAdmin, Interrupted
from .admin_mysql import AdminError
from .config import Config, ConfigError, load_config
from .invocation import Invocation, InvocationError, parse_invocation, with_overrides
from .metrics_emf import EmfMetrics
from .ports import MetricName, StoreUnavailable
from .runtime import Runtime, runtime_for

# How long a redrive invocation waits for running relays to give the shards back (a relay holds
# them for its whole run: a scheduled run that is just starting is not waited out).
REDRIVE_WAIT_SECONDS = 10.0
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "outbox-relay")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OutboxRelay"), service=SERVICE)
# X-Ray (disabled by Powertools itself outside Lambda) for the AWS SDK calls only: patching every
# supported module would make each SQL statement of the relay's loop (PyMySQL) a subsegment.
TRACED_MODULES = ("botocore",)
tracer = Tracer(service=SERVICE, patch_modules=TRACED_MODULES)
emf = EmfMetrics(metrics)
# The core logs through the stdlib logger "outbox_relay"; give it the same JSON format.
copy_config_to_registered_loggers(source_logger=logger, include={"outbox_relay"})


class Context(Protocol):
    """What the relay uses of the Lambda context."""

    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    return handle(event, context, os.environ)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def janitor_handler(event: Any, context: Any) -> dict[str, Any]:
    """The janitor function's entry point: retention, and the DEAD-rows gauge; nothing else."""
    return handle(event, context, os.environ, only="janitor")


def handle(event: Any, context: Context, env: Mapping[str, str], only: str | None = None) -> dict[str, Any]:
    """Validate, then run the requested action until done or shortly before the deadline.
    ``only``: the one action this entry point accepts (any, when None)."""
    try:
        invocation = parse_invocation(event)
    except InvocationError as exc:  # a manual payload: the schedules' inputs always parse
        return _failed(str(exc), MetricName.OPERATOR_ACTIONS_FAILED)
    if only is not None and invocation.action != only:
        return _failed(
            f'this function runs only the {only}: invoke it with {{"action": "{only}"}}',
            MetricName.OPERATOR_ACTIONS_FAILED,
        )
    try:
        config = load_config(env)
    except ConfigError as exc:
        return _failed(str(exc), _failure_metric(invocation, only))
    remaining = context.get_remaining_time_in_millis() / 1000.0
    deadline = time.monotonic() + remaining - config.relay.stop_margin_seconds
    runtime = runtime_for(config)
    runtime.bound(deadline)
    if invocation.action == "relay":
        settings = with_overrides(config.relay, invocation.overrides)
        if settings.dry_run:
            emf.count(MetricName.OPERATOR_ACTIONS, 1)
        relay = runtime.relay(settings, emf, owner=context.aws_request_id)
        summary = relay.run(deadline).as_dict()  # emits the run's metrics
        if summary["ok"]:
            logger.info("run finished", extra={"summary": summary})
        else:
            logger.error("run failed", extra={"summary": summary})
            if settings.dry_run:
                emf.count(MetricName.OPERATOR_ACTIONS_FAILED, 1)
        return summary
    if invocation.action == "janitor":
        return _janitor(runtime, config, deadline, scheduled=only == "janitor")
    emf.count(MetricName.OPERATOR_ACTIONS, 1)
    try:
        admin = runtime.admin()
        if invocation.action == "status":
            result = admin.status().as_dict()
        else:
            result = (
                DeadRowsAdmin(admin.store, admin.retention)
                .redrive_ids(invocation.ids, logger.info, _before(deadline), REDRIVE_WAIT_SECONDS)
                .as_dict()
            )
    except (AdminError, StoreUnavailable, Interrupted) as exc:
        return _failed(f"{invocation.action}: {exc}", MetricName.OPERATOR_ACTIONS_FAILED)
    logger.info(f"{invocation.action} finished", extra={"result": result})
    return result


def _before(deadline: float) -> Callable[[], None]:
    """A redrive's checkpoint: stop between two batches once the run's time is nearly out."""

    def checkpoint() -> None:
        if time.monotonic() > deadline - 1.0:
            raise Interrupted("stopped between two batches at the deadline; invoke again to finish")

    return checkpoint


def _janitor(runtime: Runtime, config: Config, deadline: float, scheduled: bool) -> dict[str, Any]:
    """Retention, then the DEAD rows left: the ``DeadCount`` gauge and, on the janitor function,
    ``JanitorSucceeded`` or ``JanitorFailed`` (a pass stopped by the deadline succeeded: the next
    tick goes on).  Run by hand on the relay function it is an operator action: it must not make a
    broken janitor function look alive."""
    if not scheduled:
        emf.count(MetricName.OPERATOR_ACTIONS, 1)
    try:
        admin = runtime.admin()
        report = admin.janitor(config.retention, deadline, progress=logger.info)
        dead = admin.dead_count()
    except (AdminError, StoreUnavailable) as exc:
        failed = MetricName.JANITOR_FAILED if scheduled else MetricName.OPERATOR_ACTIONS_FAILED
        return _failed(f"janitor: {exc}", failed)
    emf.count(MetricName.JANITOR_DELETED, report.deleted_published + report.deleted_dead)
    emf.gauge(MetricName.DEAD_COUNT, dead, "Count")
    if scheduled:
        emf.count(MetricName.JANITOR_SUCCEEDED, 1)
    result = {**report.as_dict(), "dead": dead}
    logger.info("janitor finished", extra={"result": result})
    return result


def _failure_metric(invocation: Invocation, only: str | None) -> str:
    """What a failure of ``invocation`` counts as: a relay run, the janitor or an operator action."""
    if invocation.action == "janitor" and only == "janitor":
        return MetricName.JANITOR_FAILED
    if invocation.action == "relay" and not invocation.overrides.get("dry_run"):
        return MetricName.RUN_FAILED
    return MetricName.OPERATOR_ACTIONS_FAILED


def _failed(error: str, metric: str) -> dict[str, Any]:
    logger.error(error)
    emf.count(metric, 1)
    return {"ok": False, "error": error}
