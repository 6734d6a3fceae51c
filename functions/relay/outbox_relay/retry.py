"""Retry policy: exponential backoff with full jitter, as a value object."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``next_delay(n)`` is uniform in [0, min(max, base·2ⁿ)] (AWS's "full jitter").

    Only a row's own failures count as attempts; Kafka or database outages never do.
    """

    base_seconds: float = 1.0
    max_seconds: float = 900.0
    max_attempts: int = 10

    def ceiling(self, attempts: int) -> float:
        """Upper bound of the delay after ``attempts`` failures (no overflow for large n)."""
        if attempts >= 64:
            return self.max_seconds
        return min(self.max_seconds, self.base_seconds * (2.0**attempts))

    def next_delay(self, attempts: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(attempts))

    def exhausted(self, attempts: int) -> bool:
        """True once a row has failed ``max_attempts`` times: it goes to the dead-letter queue."""
        return attempts >= self.max_attempts
