"""How a send()'s metadata wait is read: a missing topic or a cluster that stopped answering."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from outbox_relay import produce_errors


def producer(refreshed_at: float) -> SimpleNamespace:
    return SimpleNamespace(_metadata=SimpleNamespace(_last_successful_refresh_ms=refreshed_at * 1000))


@pytest.mark.parametrize("started", [0.0, 12.5, 179.024, 86_400.125])
def test_only_an_answer_after_the_wait_began_says_the_cluster_is_up(started: float) -> None:
    # An answer from the very instant the wait began is the previous send's: the cluster may have
    # gone down since, and that is an outage, not a missing topic (simulation seed 12207).
    assert not produce_errors.cluster_answered_since(producer(started), started)
    assert not produce_errors.cluster_answered_since(producer(started - 0.5), started)
    assert produce_errors.cluster_answered_since(producer(started + 0.001), started)


def test_a_producer_without_metadata_never_says_the_cluster_answered() -> None:
    assert not produce_errors.cluster_answered_since(SimpleNamespace(), 1.0)
