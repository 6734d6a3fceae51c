"""The event files are what the template's schedules really send: EventBridge Scheduler delivers
a schedule's `Input` to the function as is, so each `events/scheduler*.json` must be one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from samtranslator.yaml_helper import yaml_parse

from outbox_relay.invocation import is_scheduled_event, parse_invocation

ROOT = Path(__file__).resolve().parents[2]


def schedule_inputs() -> list[Any]:
    template = yaml_parse((ROOT / "template.yaml").read_text())
    inputs = []
    for resource in template["Resources"].values():
        for event in resource.get("Properties", {}).get("Events", {}).values():
            if event["Type"] == "ScheduleV2":
                inputs.append(json.loads(event["Properties"]["Input"]))
    return inputs


def test_each_scheduler_event_file_is_a_schedule_input_of_the_template() -> None:
    inputs = schedule_inputs()
    files = sorted((ROOT / "events").glob("scheduler*.json"))
    assert inputs and files
    for path in files:
        assert json.loads(path.read_text()) in inputs, f"{path.name} is not what any schedule sends"
    for value in inputs:
        assert value in [json.loads(p.read_text()) for p in files], f"no event file for the schedule {value}"


def test_every_scheduled_event_is_recognised_as_scheduled_and_names_a_known_action() -> None:
    for value in [*schedule_inputs(), json.loads((ROOT / "events" / "scheduled.json").read_text())]:
        assert is_scheduled_event(value)
        assert parse_invocation(value).action in ("relay", "janitor")
