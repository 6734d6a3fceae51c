"""A CI-sized randomized fault-injection run (the long run is `make faults`)."""

from __future__ import annotations

import pytest

from tests.faults.runner import run_many, summarize

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_randomized_faults_lose_nothing_and_keep_per_aggregate_order() -> None:
    results = run_many(runs=3, seed=1000, chaos_seconds=8.0, verbose=False, restart_kafka_first=True)
    summary = summarize(results)
    print(summary)
    assert summary["failed_runs"] == [], summary
    assert summary["lost"] == 0 and summary["order_violations"] == 0 and summary["unequal_copies"] == 0
    assert summary["events_written"] > 1000 and sum(summary["faults"].values()) >= 15
    assert summary["dead"] > 0 and summary["dead_without_letter"] == 0
    assert summary["faults"].get("kafka_restart") == 1
    # Liveness: every invocation returned (none crashed), within the memory cap, and the drain
    # left no aggregate behind.
    assert summary["crashed_invocations"] == 0 and summary["starved_aggregates"] == 0, summary
    assert 0 < summary["peak_rss_mb"] <= 200, summary
