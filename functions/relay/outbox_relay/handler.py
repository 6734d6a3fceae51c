"""The Lambda entry point: adapts the event and context to the relay core, nothing more.

Handler: ``outbox_relay.handler.lambda_handler``.  Accepts an EventBridge scheduled event or a
manual JSON payload: relay overrides (``batch_size``, ``max_events``, ``dry_run``,
``poll_window_seconds``), or an ``action`` (``janitor``, ``status``, ``redrive`` with ``ids``),
and returns the JSON summary.  A bad payload or configuration returns ``{"ok": false, "error": "<one
line>"}`` having touched nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from .admin_mysql import AdminError
from .config import ConfigError, InvocationError, load_config, parse_invocation, with_overrides
from .metrics_emf import EmfMetrics
from .ports import StoreUnavailable
from .runtime import runtime_for

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "outbox-relay")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OutboxRelay"), service=SERVICE)
tracer = Tracer(service=SERVICE)  # X-Ray; disabled by Powertools itself outside Lambda
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


def handle(event: Any, context: Context, env: Mapping[str, str]) -> dict[str, Any]:
    """Validate, then run the requested action until done or shortly before the deadline."""
    try:
        invocation = parse_invocation(event)
        config = load_config(env)
    except (InvocationError, ConfigError) as exc:
        return _failed(str(exc))
    remaining = context.get_remaining_time_in_millis() / 1000.0
    deadline = time.monotonic() + remaining - config.relay.stop_margin_seconds
    runtime = runtime_for(config)
    if invocation.action == "relay":
        settings = with_overrides(config.relay, invocation.overrides)
        relay = runtime.relay(settings, EmfMetrics(metrics), owner=context.aws_request_id)
        summary = relay.run(deadline).as_dict()
        if summary["ok"]:
            logger.info("run finished", extra={"summary": summary})
        else:
            logger.error("run failed", extra={"summary": summary})
        return summary
    metrics.add_metric(name="OperatorActions", unit="Count", value=1)
    try:
        admin = runtime.admin()
        if invocation.action == "janitor":
            report = admin.janitor(config.retention, deadline, progress=logger.info)
            metrics.add_metric(
                name="JanitorDeleted", unit="Count", value=report.deleted_published + report.deleted_dead
            )
            result = report.as_dict()
        elif invocation.action == "status":
            result = admin.status().as_dict()
        else:
            result = admin.redrive(invocation.ids, progress=logger.info).as_dict()
    except (AdminError, StoreUnavailable) as exc:
        return _failed(f"{invocation.action}: {exc}")
    logger.info(f"{invocation.action} finished", extra={"result": result})
    return result


def _failed(error: str) -> dict[str, Any]:
    logger.error(error)
    metrics.add_metric(name="RunFailed", unit="Count", value=1)
    return {"ok": False, "error": error}
