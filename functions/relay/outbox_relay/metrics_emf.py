"""Metrics port on Powertools (CloudWatch EMF): one JSON log line per flush, no API calls."""

from __future__ import annotations

from aws_lambda_powertools import Metrics as PowertoolsMetrics
from aws_lambda_powertools.metrics import MetricUnit

_UNITS = {
    "Count": MetricUnit.Count,
    "Seconds": MetricUnit.Seconds,
    "Milliseconds": MetricUnit.Milliseconds,
}


class EmfMetrics:
    """:class:`~outbox_relay.ports.Metrics` writing to a Powertools ``Metrics`` instance."""

    def __init__(self, metrics: PowertoolsMetrics) -> None:
        self.metrics = metrics

    def count(self, name: str, value: float) -> None:
        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

    def gauge(self, name: str, value: float, unit: str) -> None:
        self.metrics.add_metric(name=name, unit=_UNITS.get(unit, MetricUnit.NoUnit), value=value)
