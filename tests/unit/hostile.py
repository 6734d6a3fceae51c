"""Hostile option values for the operator commands: what people (and scripts) type by mistake."""

from __future__ import annotations

import io
import os
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from unittest import mock

from hypothesis import strategies as st

from outbox_relay import cli

# Digits of other scripts (Arabic-Indic, Devanagari, fullwidth, mathematical bold, Thai): int()
# and float() take them, a plain decimal does not; and superscripts, which neither takes.
_OTHER_DIGITS = [
    *("".join(chr(zero + i) for i in range(10)) for zero in (0x660, 0x966, 0xFF10, 0x1D7CE, 0xE50)),
    "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",
]
_WORDS = [
    "nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "-Infinity", "infinity", "1e999",
    "-1e999", "1e-999", "0", "-0", "+0", "0.0", "-0.0", "00", "0e0", "", " ", "\t", "\n", "5\n",
    " 5 ", "5.", ".5", "1e3", "1E3", "1e+3", "5,0", "5 0", "1/2", "True", "None", "0x10", "0o7",
    "0b1", "1_0", "1__0", "_1", "1_", "+-1", "--1", "- 1", "\uff11", "\u00bd", "\u216b", "\u0663",
    "1e", "e1", ".", "-", "+", "5s", "5 s", "\x00", "5\x00", "\u200b5", "5\u2028", "9" * 5000,
    "1" + "0" * 400,
]  # fmt: skip


def _underscored(n: int) -> str:
    text = str(abs(n))
    cut = max(1, len(text) // 2)
    return ("-" if n < 0 else "") + text[:cut] + "_" + text[cut:]


def _other_digits(n: int, script: str) -> str:
    return "".join(script[int(c)] if c.isdigit() else c for c in str(n))


integers = st.integers(min_value=-(10**30), max_value=10**30)
numbers_as_text = st.one_of(
    integers.map(str),
    integers.map(_underscored),
    integers.map(hex),
    integers.map(oct),
    st.builds(_other_digits, integers, st.sampled_from(_OTHER_DIGITS)),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.30f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:e}"),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)
# Anything at all, leaning to what looks almost like a number.
option_values = st.one_of(
    st.sampled_from(_WORDS),
    numbers_as_text,
    st.text(),
    st.text(alphabet="0123456789+-.eE_xX ").filter(bool),
    st.builds(lambda a, b: a + b, numbers_as_text, st.sampled_from(["", " ", "\n", "s", "ms", "_", "\x00"])),
)

# Each numeric option of invoke, status, dry-run and janitor.
NUMERIC_OPTIONS = [
    ("invoke", "--timeout"),
    ("status", "--timeout"),
    ("dry-run", "--limit"),
    ("dry-run", "--timeout"),
    ("janitor", "--max-seconds"),
    ("janitor", "--timeout"),
]
OTHER_WORDS = ["--json", "--event", "--help", "-h", "--", "-", "--timeout=", "--limit=", "--max-seconds"]


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


def run(argv: list[str], env: dict[str, str] | None = None) -> Outcome:
    """``outbox-relay argv`` in this process, with only ``env`` as its environment."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}, clear=True), redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(argv)
        except BaseException:  # the property: main() never lets anything out
            return Outcome(-1, out.getvalue(), traceback.format_exc())
    return Outcome(code, out.getvalue(), err.getvalue())


def check(outcome: Outcome, allowed: Callable[[int], bool] = lambda code: 0 <= code <= 4) -> None:
    """Never a traceback, an exit status 0 to 4, and an error is one line on stderr."""
    assert outcome.code != -1, outcome.err
    assert allowed(outcome.code), outcome
    assert "Traceback" not in outcome.err and "unexpected error" not in outcome.err, outcome.err
    if outcome.code != 0:
        assert outcome.err.endswith("\n") and outcome.err.count("\n") == 1, outcome.err
