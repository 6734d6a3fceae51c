"""Every alarm of the transformed template, evaluated the way CloudWatch does against the metrics a
relay emits on each schedule the template accepts: a healthy relay never pages, a stopped one pages
within a stated time, and the brakes (ReservedConcurrency=0, ScheduleState=DISABLED) page nothing.

CloudWatch's rules used here (the evaluator below is this much and no more):
- an alarm looks at the last EvaluationPeriods complete periods, each aggregated with its statistic
  (Sum, Maximum); it goes to ALARM when DatapointsToAlarm of them breach, else OK
  (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html,
  "Evaluating an alarm");
- a period without data counts as breaching (breaching), not breaching (notBreaching), or is left
  out (ignore: the state holds when nothing is left; missing: INSUFFICIENT_DATA) (same page,
  "Configuring how CloudWatch alarms treat missing data"; CloudWatch then also looks further back
  than N periods for data, which this evaluator does not: it is not needed for these alarms);
- Period is 10, 20, 30 or a multiple of 60; Period x EvaluationPeriods is at most 86,400 s for
  periods under one hour and 604,800 s otherwise; 1 <= DatapointsToAlarm <= EvaluationPeriods
  (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html).

The relay model: EventBridge Scheduler ticks every rate(N minutes) from an arbitrary offset; each
run's metrics land when the run ends, up to one schedule period after its tick (the jitter: start
delay and run length); a stopped relay's runs fail (RunFailed, no lag gauges, no RunSucceeded); a
refused invocation (reserved concurrency 0) is an AsyncEventsDropped; the janitor ticks on its own
schedule and ends within its 300 s timeout."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from outbox_relay.ports import MetricName
from tests.unit.deploy_model import SCENARIOS, Stack, template, transformed
from tests.unit.test_template_rules import refusals

MINUTE, HOUR, DAY = 60, 3600, 86400
RATES = [int(v) for v in template()["Parameters"]["ScheduleRateMinutes"]["AllowedValues"]]


# --- the evaluator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alarm:
    name: str
    namespace: str
    metric: str
    statistic: str
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    treat_missing: str

    @classmethod
    def of(cls, name: str, p: Mapping[str, Any]) -> Alarm:
        return cls(
            name=name,
            namespace=p["Namespace"],
            metric=p["MetricName"],
            statistic=p["Statistic"],
            period=int(p["Period"]),
            evaluation_periods=int(p["EvaluationPeriods"]),
            datapoints_to_alarm=int(p.get("DatapointsToAlarm", p["EvaluationPeriods"])),
            threshold=float(p["Threshold"]),
            comparison=p["ComparisonOperator"],
            treat_missing=p.get("TreatMissingData", "missing"),
        )

    def limits(self) -> list[str]:
        """What PutMetricAlarm refuses (the deploy would fail at this alarm)."""
        problems = []
        if self.period not in (10, 20, 30) and self.period % MINUTE:
            problems.append(f"{self.name}: Period {self.period} is not 10, 20, 30 or a multiple of 60")
        limit = DAY if self.period < HOUR else 7 * DAY
        if self.period * self.evaluation_periods > limit:
            problems.append(
                f"{self.name}: Period x EvaluationPeriods is {self.period * self.evaluation_periods} s"
                f" > {limit} s"
            )
        if not 1 <= self.datapoints_to_alarm <= self.evaluation_periods:
            problems.append(f"{self.name}: DatapointsToAlarm {self.datapoints_to_alarm} not in 1..N")
        return problems

    def breaches(self, value: float) -> bool:
        compare: dict[str, Callable[[float, float], bool]] = {
            "GreaterThanThreshold": lambda v, t: v > t,
            "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
            "LessThanThreshold": lambda v, t: v < t,
            "LessThanOrEqualToThreshold": lambda v, t: v <= t,
        }
        return compare[self.comparison](value, self.threshold)


@dataclass
class Series:
    """One alarm's metric, aggregated per period (period index -> value)."""

    alarm: Alarm
    values: dict[int, float] = field(default_factory=dict)

    def add(self, t: float, value: float) -> None:
        index = int(t // self.alarm.period)
        if index not in self.values:
            self.values[index] = value
        elif self.alarm.statistic == "Sum":
            self.values[index] += value
        elif self.alarm.statistic == "Maximum":
            self.values[index] = max(self.values[index], value)
        else:
            raise AssertionError(f"the evaluator does not know {self.alarm.statistic}")

    def evaluate(self, now: int, state: str) -> str:
        """The state after an evaluation at ``now`` (seconds)."""
        a = self.alarm
        last = now // a.period  # the period in progress: not complete, not evaluated
        verdicts: list[bool] = []
        for index in range(last - a.evaluation_periods, last):
            value = self.values.get(index)
            if value is not None:
                verdicts.append(a.breaches(value))
            elif a.treat_missing == "breaching":
                verdicts.append(True)
            elif a.treat_missing == "notBreaching":
                verdicts.append(False)
        if not verdicts:
            return state if a.treat_missing == "ignore" else "INSUFFICIENT_DATA"
        return "ALARM" if sum(verdicts) >= a.datapoints_to_alarm else "OK"


def evaluate(
    alarms: Mapping[str, Alarm], points: list[tuple[str, str, float, float]], start: int, end: int
) -> dict[str, list[tuple[int, str]]]:
    """Each alarm evaluated every minute from ``start`` to ``end``: its state changes (time, state).
    ``points`` are (namespace, metric, time, value)."""
    series = {name: Series(alarm) for name, alarm in alarms.items()}
    for namespace, metric, t, value in points:
        for s in series.values():
            if (s.alarm.namespace, s.alarm.metric) == (namespace, metric):
                s.add(t, value)
    changes: dict[str, list[tuple[int, str]]] = {name: [] for name in alarms}
    for name, s in series.items():
        state = "INSUFFICIENT_DATA"
        for now in range(start, end, MINUTE):
            new = s.evaluate(now, state)
            if new != state:
                changes[name].append((now, new))
                state = new
    return changes


def test_the_evaluator_follows_m_of_n_and_missing_data() -> None:
    lag = Alarm("a", "n", "m", "Maximum", 60, 5, 3, 300, "GreaterThanThreshold", "breaching")
    s = Series(lag)
    for minute in (0, 1, 2, 3, 4):
        s.add(minute * 60 + 5, 10)
    assert s.evaluate(5 * 60, "INSUFFICIENT_DATA") == "OK"
    assert s.evaluate(7 * 60, "OK") == "OK"  # 2 missing (breaching) of 5
    assert s.evaluate(8 * 60, "OK") == "ALARM"  # 3 of 5
    s.add(8 * 60 + 1, 400)  # a reading above the threshold breaches like a missing one
    s.add(5 * 60 + 1, 1)
    assert s.evaluate(9 * 60, "OK") == "ALARM"  # minutes 4..8: 6, 7 missing, 8 above
    ignore = Series(Alarm("d", "n", "m", "Maximum", 300, 1, 1, 0, "GreaterThanThreshold", "ignore"))
    ignore.add(10, 3)
    assert ignore.evaluate(300, "OK") == "ALARM"
    assert ignore.evaluate(900, "ALARM") == "ALARM"  # nothing since: the state holds
    missing = Series(Alarm("e", "n", "m", "Sum", 60, 1, 1, 0, "GreaterThanThreshold", "missing"))
    assert missing.evaluate(600, "OK") == "INSUFFICIENT_DATA"


# --- the relay as its schedules run it ------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    alarms: dict[str, Alarm]
    relay_every: int | None  # seconds between ticks, None when the schedule is off
    relay_refused: bool  # reserved concurrency 0: every invocation refused
    janitor_every: int | None


def _every(expression: str) -> int:
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours)\)", expression)
    assert match, f"{expression!r}: the run alarms are checked for rate(N minutes) schedules only"
    return int(match[1]) * (HOUR if match[2].startswith("hour") else MINUTE)


def deploy(**overrides: str) -> Deployment:
    parameters = {**SCENARIOS["msk-iam"], **overrides}
    stack = Stack(transformed(parameters), parameters)
    resources = stack.template["Resources"]
    alarms = {
        name: Alarm.of(name, stack.resolve(r["Properties"]))
        for name, r in resources.items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    every: dict[str, int | None] = {}
    for r in resources.values():
        if r["Type"] != "AWS::Scheduler::Schedule":
            continue
        properties = stack.resolve({k: v for k, v in r["Properties"].items() if k != "Target"})
        target = r["Properties"]["Target"]["Arn"]["Fn::GetAtt"][0]
        enabled = properties.get("State", "ENABLED") == "ENABLED"
        every[target] = _every(properties["ScheduleExpression"]) if enabled else None
    relay = resources["RelayFunction"]["Properties"]
    reserved = stack.resolve({"r": relay.get("ReservedConcurrentExecutions", {"Ref": "AWS::NoValue"})})
    return Deployment(alarms, every["RelayFunction"], reserved.get("r") in (0, "0"), every["JanitorFunction"])


Jitter = Callable[[int, int], float]  # (tick number, period in s) -> seconds from tick to metrics


def random_jitter(seed: int) -> Jitter:
    rng = random.Random(seed)
    return lambda _k, period: rng.uniform(0, period - 1)


def alternating_jitter(k: int, period: int) -> float:
    """The worst case for aligned periods: runs that end early, then late, then early..."""
    return 0.5 if k % 2 else period - 1.0


def relay_points(
    d: Deployment, end: int, jitter: Jitter, stop_at: int | None = None, offset: int = 37
) -> tuple[list[tuple[str, str, float, float]], float]:
    """The metrics of ``end`` seconds of a relay (failing from ``stop_at`` on), and the time of the
    last run that measured the lag and succeeded."""
    points: list[tuple[str, str, float, float]] = []
    last_success = 0.0
    if d.relay_every is not None:
        for k, tick in enumerate(range(offset, end, d.relay_every)):
            if d.relay_refused:  # throttled: dropped after its 60 s maximum event age
                points.append(("AWS/Lambda", "AsyncEventsDropped", tick + 60, 1))
                continue
            t = tick + jitter(k, d.relay_every)
            if stop_at is not None and tick >= stop_at:
                points.append(("OutboxRelay", MetricName.RUN_FAILED, t, 1))
                continue
            points += [
                ("OutboxRelay", MetricName.RUN_SUCCEEDED, t, 1),
                ("OutboxRelay", MetricName.OLDEST_PENDING_AGE_SECONDS, t, 2.0),
                ("OutboxRelay", MetricName.PENDING_COUNT, t, 3),
                ("OutboxRelay", MetricName.PUBLISHED, t, 100),
                ("AWS/Lambda", "Invocations", t, 1),
            ]
            last_success = max(last_success, t)
    if d.janitor_every is not None:
        rng = random.Random(7)
        for tick in range(offset + 11, end, d.janitor_every):
            t = tick + rng.uniform(0, 300)  # the janitor's timeout
            points += [
                ("OutboxRelay", MetricName.JANITOR_SUCCEEDED, t, 1),
                ("OutboxRelay", MetricName.DEAD_COUNT, t, 0),
            ]
    return points, last_success


def warm_up(d: Deployment) -> int:
    """From when every alarm has a full window of the relay's history."""
    return max(a.period * (a.evaluation_periods + 1) for a in d.alarms.values())


def paged(changes: Mapping[str, list[tuple[int, str]]], since: int = 0) -> dict[str, int]:
    """The alarms that went to ALARM at or after ``since``, and when first."""
    return {
        name: min(t for t, s in states if s == "ALARM" and t >= since)
        for name, states in changes.items()
        if any(s == "ALARM" and t >= since for t, s in states)
    }


def schedules() -> Iterator[tuple[int, str]]:
    """Each rate the template accepts, with the shortest NoSuccessAlarmMinutes its rules accept."""
    for rate in RATES:
        minutes = next(
            m
            for m in template()["Parameters"]["NoSuccessAlarmMinutes"]["AllowedValues"]
            if not refusals(
                {**SCENARIOS["msk-iam"], "ScheduleRateMinutes": str(rate), "NoSuccessAlarmMinutes": m}
            )
        )
        yield rate, minutes


SCHEDULES = list(schedules())


@pytest.mark.parametrize(("rate", "no_success_minutes"), SCHEDULES)
def test_every_alarm_is_deployable_on_every_schedule(rate: int, no_success_minutes: str) -> None:
    for minutes in (no_success_minutes, "1440"):
        d = deploy(ScheduleRateMinutes=str(rate), NoSuccessAlarmMinutes=minutes)
        assert [p for a in d.alarms.values() for p in a.limits()] == []


@pytest.mark.parametrize("jitter_name", ["random", "alternating"])
@pytest.mark.parametrize(("rate", "no_success_minutes"), SCHEDULES)
def test_a_healthy_relay_never_pages_on_any_schedule(
    rate: int, no_success_minutes: str, jitter_name: str
) -> None:
    for minutes in (no_success_minutes, "10" if int(no_success_minutes) <= 10 else no_success_minutes):
        d = deploy(ScheduleRateMinutes=str(rate), NoSuccessAlarmMinutes=minutes)
        assert d.relay_every == rate * MINUTE
        jitter = random_jitter(rate) if jitter_name == "random" else alternating_jitter
        end = warm_up(d) + 2 * DAY
        points, _ = relay_points(d, end, jitter)
        assert paged(evaluate(d.alarms, points, warm_up(d), end)) == {}, (rate, minutes)


@pytest.mark.parametrize(("rate", "no_success_minutes"), SCHEDULES)
def test_a_stopped_relay_pages_within_the_stated_time(rate: int, no_success_minutes: str) -> None:
    """Stated in the README: LagAlarm within 6 schedule periods of the last run that measured the
    lag, NoSuccessfulRunAlarm within NoSuccessAlarmMinutes of the last successful run (each plus a
    minute: CloudWatch evaluates once a minute)."""
    d = deploy(ScheduleRateMinutes=str(rate), NoSuccessAlarmMinutes=no_success_minutes)
    stop_at = warm_up(d) + DAY + 1234
    end = stop_at + 8 * rate * MINUTE + int(no_success_minutes) * MINUTE + HOUR
    points, last_success = relay_points(d, end, random_jitter(rate), stop_at=stop_at)
    found = paged(evaluate(d.alarms, points, warm_up(d), end))
    assert set(found) == {"LagAlarm", "NoSuccessfulRunAlarm"}, found
    assert all(t > last_success for t in found.values())
    assert found["LagAlarm"] - last_success <= 6 * rate * MINUTE + MINUTE
    assert found["NoSuccessfulRunAlarm"] - last_success <= int(no_success_minutes) * MINUTE + MINUTE


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("brake", [{"ReservedConcurrency": "0"}, {"ScheduleState": "DISABLED"}])
def test_the_brakes_page_nothing(rate: int, brake: dict[str, str]) -> None:
    minutes = dict(SCHEDULES)[rate]
    d = deploy(ScheduleRateMinutes=str(rate), NoSuccessAlarmMinutes=minutes, **brake)
    end = warm_up(d) + DAY
    points, _ = relay_points(d, end, random_jitter(rate))
    # The brake applied to a stack that has run for a while (a first deploy's alarms start without
    # history: see the README).
    assert paged(evaluate(d.alarms, points, warm_up(d), end)) == {}, (rate, brake)


def test_a_cron_schedule_is_refused_with_one_line() -> None:
    parameters = {**SCENARIOS["msk-iam"], "ScheduleExpression": "cron(0/5 8-18 ? * MON-FRI *)"}
    (reason,) = refusals(parameters)
    assert reason.startswith("ScheduleExpression is replaced by ScheduleRateMinutes") and "\n" not in reason
    assert refusals(SCENARIOS["msk-iam"]) == []


def test_a_no_success_window_shorter_than_two_schedule_periods_is_refused() -> None:
    too_short = {**SCENARIOS["msk-iam"], "ScheduleRateMinutes": "15", "NoSuccessAlarmMinutes": "20"}
    assert refusals(too_short) == [
        "ScheduleRateMinutes=15 needs NoSuccessAlarmMinutes of at least 30 (two schedule periods)."
    ]
    # What the rule refuses would page a healthy relay: 20 one-minute periods can all fall between
    # two runs 15 minutes apart that end early, then late.
    d = deploy(ScheduleRateMinutes="15", NoSuccessAlarmMinutes="30")
    short = dataclasses.replace(
        d.alarms["NoSuccessfulRunAlarm"], evaluation_periods=20, datapoints_to_alarm=20
    )
    end = warm_up(d) + DAY
    points, _ = relay_points(d, end, alternating_jitter)
    assert "NoSuccessfulRunAlarm" in paged(evaluate({"NoSuccessfulRunAlarm": short}, points, warm_up(d), end))
