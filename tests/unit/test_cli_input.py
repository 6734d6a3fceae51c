"""Hostile option values for invoke, status, dry-run and janitor, at the parse level (no stack).

Every numeric option takes a plain decimal in its range and nothing else (no NaN, infinities,
`1_0`, hex, other scripts' digits, negatives, zero where it means nothing); whatever is typed,
`outbox-relay` answers with an exit status from 0 to 4, and an error is one line on stderr, never
a traceback.  The environment is empty here, so a value that parses stops at the configuration
(exit 2) and nothing is reached; tests/integration/test_cli_hostile.py runs them on a database.
"""

from __future__ import annotations

import argparse
import math
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outbox_relay import cli
from outbox_relay.cli_common import integer, outbox_ids, seconds
from outbox_relay.sql import MAX_OUTBOX_ID
from tests.unit.hostile import NUMERIC_OPTIONS, OTHER_WORDS, check, option_values, run

# The ranges the commands use (cli.py) and a few others.
INTEGER_RANGES = [(1, cli.MAX_LIMIT), (0, 10), (-5, 5), (1, 2**64 - 1)]
SECONDS_RANGES = [(1.0, 900.0, False), (1.0, 86_400.0, False), (0.0, 86_400.0, True), (0.0, 60.0, False)]
PLAIN = set(string.digits + "+-.eE")
RELAXED = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _refused(parse: object, text: str) -> argparse.ArgumentTypeError:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)  # type: ignore[operator]
    return err.value


@RELAXED
@given(option_values, st.sampled_from(INTEGER_RANGES))
@example("1_0", (1, 10_000))
@example("\u0661\u0660", (1, 10_000))
@example("9" * 5000, (1, 10_000))
def test_an_integer_option_takes_a_plain_decimal_in_range_or_refuses_in_one_line(
    text: str, bounds: tuple[int, int]
) -> None:
    low, high = bounds
    try:
        value = integer(low, high)(text)
    except argparse.ArgumentTypeError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 200, message
        return
    stripped = text.strip()
    assert stripped and set(stripped) <= set(string.digits + "+-"), text
    assert type(value) is int and low <= value <= high


@RELAXED
@given(option_values, st.sampled_from(SECONDS_RANGES))
@example("nan", (1.0, 900.0, False))
@example("inf", (1.0, 900.0, False))
@example("1e999", (1.0, 86_400.0, False))
@example("-0", (0.0, 86_400.0, True))
@example("1e-999", (0.0, 86_400.0, True))
def test_a_seconds_option_takes_a_finite_plain_decimal_in_range_or_refuses_in_one_line(
    text: str, bounds: tuple[float, float, bool]
) -> None:
    low, high, above_low = bounds
    try:
        value = seconds(low, high, above_low=above_low)(text)
    except argparse.ArgumentTypeError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 200, message
        return
    stripped = text.strip()
    assert stripped and set(stripped) <= PLAIN, text
    assert math.isfinite(value) and (low < value if above_low else low <= value) and value <= high


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=cli.MAX_LIMIT), st.sampled_from(["", "+", " ", "000"]))
def test_every_plain_value_in_range_is_taken_as_written(limit: int, prefix: str) -> None:
    args = cli.parser().parse_args(["dry-run", "--limit", f"{prefix}{limit}"])
    assert args.limit == limit
    for command in ("invoke", "status", "dry-run", "janitor"):
        timeout = cli.parser().parse_args([command, f"--timeout={limit / 1000 + 1}"]).timeout
        assert timeout == limit / 1000 + 1


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["dry-run", "--limit", "-1"], "expected a whole number from 1 to 10000, got '-1'"),
        (["dry-run", "--limit", "0"], "from 1 to 10000, got '0'"),
        (["dry-run", "--limit", "10001"], "from 1 to 10000"),
        (["dry-run", "--limit", "1_0"], "expected a whole number, got '1_0'"),
        (["invoke", "--timeout", "inf"], "expected a number of seconds, got 'inf'"),
        (["invoke", "--timeout", "-5"], "expected a number of seconds from 1 up to 900, got '-5'"),
        (["invoke", "--timeout", "901"], "from 1 up to 900"),
        (["invoke", "--timeout", "0"], "from 1 up to 900, got '0'"),
        (["invoke", "--timeout", "nan"], "expected a number of seconds, got 'nan'"),
        (["janitor", "--max-seconds", "nan"], "expected a number of seconds, got 'nan'"),
        (["janitor", "--max-seconds", "0"], "above 0 up to 86400, got '0'"),
        (["janitor", "--max-seconds", "1e999"], "above 0 up to 86400, got '1e999'"),
        (["status", "--timeout", "0"], "from 1 up to 86400, got '0'"),
        (["status", "--timeout", "nan"], "expected a number of seconds, got 'nan'"),
        (["dry-run", "--timeout", "-1"], "from 1 up to 86400, got '-1'"),
        (["janitor", "--timeout", "1e999"], "from 1 up to 86400, got '1e999'"),
        (["janitor", "--timeout", "86401"], "from 1 up to 86400, got '86401'"),
        (
            ["dry-run", "--limit", "9" * 5000],
            "got '9999999999999999999999999999999999999999'... (5000 characters)",
        ),
        (["invoke", "--timeout", "3\n\x1b[2J"], "got '3\\n\\x1b[2J'"),
        (["status", "--nope\nrm -rf"], "unrecognized arguments: --nope\\nrm -rf"),
    ],
)
def test_known_bad_values_are_refused_in_one_line_before_anything_runs(argv: list[str], why: str) -> None:
    outcome = run(argv)
    check(outcome, lambda code: code == 2)
    assert why in outcome.err and outcome.out == "", outcome.err
    assert outcome.err.startswith("outbox-relay")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC_OPTIONS), option_values, st.booleans())
def test_any_value_of_a_numeric_option_ends_in_an_exit_status_and_at_most_one_line(
    option: tuple[str, str], value: str, joined: bool
) -> None:
    command, name = option
    outcome = run([command, f"{name}={value}"] if joined else [command, name, value])
    # Empty environment: a value that parses stops at the configuration (2), or for invoke at the
    # handler's own answer (1, as the function would answer).
    check(outcome, lambda code: code in ((1, 2) if command == "invoke" else (2,)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["invoke", "status", "dry-run", "janitor"]),
    st.lists(
        st.one_of(st.sampled_from([o for _, o in NUMERIC_OPTIONS] + OTHER_WORDS), option_values), max_size=6
    ),
)
def test_any_arguments_end_in_an_exit_status_and_at_most_one_line(command: str, rest: list[str]) -> None:
    check(run([command, *rest]))


@settings(max_examples=100, deadline=None)
@given(option_values)
@example("9" * 5000)
@example("1,\u0661")
def test_outbox_ids_are_refused_in_one_line(text: str) -> None:
    try:
        ids = outbox_ids(text)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
        return
    assert ids and all(1 <= i <= MAX_OUTBOX_ID for i in ids)
