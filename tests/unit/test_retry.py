"""Retry policy: exponential backoff with full jitter, attempts counted per row."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.retry import RetryPolicy


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=2**32))
def test_delay_is_within_zero_and_the_capped_exponential(attempts: int, seed: int) -> None:
    policy = RetryPolicy(base_seconds=1.0, max_seconds=900.0, max_attempts=10)
    delay = policy.next_delay(attempts, random.Random(seed))
    assert 0.0 <= delay <= min(900.0, 2.0 ** min(attempts, 64))


def test_ceiling_doubles_then_caps() -> None:
    policy = RetryPolicy(base_seconds=0.5, max_seconds=10.0)
    assert [policy.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_spreads_over_the_whole_window() -> None:
    policy = RetryPolicy(base_seconds=1.0, max_seconds=900.0)
    rng = random.Random(3)
    delays = [policy.next_delay(4, rng) for _ in range(2000)]
    assert min(delays) < 1.0 and max(delays) > 15.0  # window is [0, 16]


def test_exhausted_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (0, 1, 2, 3, 4)] == [False, False, False, True, True]
