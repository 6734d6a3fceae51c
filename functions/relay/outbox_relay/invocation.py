"""What an invocation asks for: the event adapter's half of configuration.

The environment (``config.py``) says how the relay is deployed; the event says what this one
invocation should do (a scheduled run, or an operator's manual payload with overrides).
Problems are one line (:class:`InvocationError`), never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .config import RelaySettings


class InvocationError(ValueError):
    """A manual invocation payload the relay will not act on.  ``str()`` is one line."""


@dataclass(frozen=True)
class Invocation:
    """What an invocation asks for: an action and, for ``relay``, setting overrides."""

    action: str = "relay"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    ids: tuple[int, ...] = ()


_OVERRIDES: dict[str, tuple[type | tuple[type, ...], Callable[[Any], bool], str]] = {
    "batch_size": (int, lambda v: 1 <= v <= 10_000, "an integer from 1 to 10000"),
    "max_events": (int, lambda v: v >= 1, "a positive integer"),
    "dry_run": (bool, lambda v: True, "true or false"),
    "poll_window_seconds": ((int, float), lambda v: 0 <= v <= 900, "a number of seconds from 0 to 900"),
}
ACTIONS = ("relay", "janitor", "status", "redrive")
_SCHEDULE_SOURCES = ("aws.events", "aws.scheduler")


def is_scheduled_event(event: Mapping[str, Any]) -> bool:
    """EventBridge rule (``Scheduled Event``) or Scheduler payloads carry no overrides."""
    return event.get("detail-type") == "Scheduled Event" or event.get("source") in _SCHEDULE_SOURCES


def parse_invocation(event: object) -> Invocation:
    """What an event asks for: a scheduled run (the Scheduler input may name an ``action``), or a
    manual payload ``{"action": ..., <overrides>}`` / ``{"action": "redrive", "ids": [...]}``.

    Raises :class:`InvocationError` when any field is unknown or of the wrong type.
    """
    if event is None:
        return Invocation()
    if not isinstance(event, dict):
        raise InvocationError(
            f"invalid invocation payload: expected a JSON object, got {type(event).__name__}"
        )
    fields = dict(event)
    if is_scheduled_event(fields):
        fields = {"action": fields["action"]} if "action" in fields and "detail-type" not in fields else {}
    action = fields.pop("action", "relay")
    if action not in ACTIONS:
        raise InvocationError(
            f"invalid invocation payload: action must be one of {', '.join(ACTIONS)}, got {action!r}"
        )
    ids: tuple[int, ...] = ()
    if action == "redrive":
        raw = fields.pop("ids", None)
        if not isinstance(raw, list) or not raw or not all(type(i) is int and i > 0 for i in raw):
            raise InvocationError(
                "invalid invocation payload: redrive needs ids, a non-empty list of outbox ids"
            )
        ids = tuple(raw)
    allowed = _OVERRIDES if action == "relay" else {}
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        names = ", ".join(sorted(allowed)) if allowed else "none besides action" + (", ids" if ids else "")
        raise InvocationError(
            f"invalid invocation payload: unknown field {', '.join(map(repr, unknown))} (allowed: {names})"
        )
    changes: dict[str, Any] = {}
    for name, value in fields.items():
        kind, ok, expected = _OVERRIDES[name]
        # bool is an int in Python; a JSON true is not a batch size.
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if type(value) not in kinds or not ok(value):
            raise InvocationError(f"invalid invocation payload: {name} must be {expected}, got {value!r}")
        changes[name] = value
    return Invocation(action, changes, ids)


def with_overrides(settings: RelaySettings, changes: Mapping[str, Any]) -> RelaySettings:
    return replace(settings, **changes)
