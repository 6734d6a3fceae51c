"""The simulation in CI: a range of seeds must pass every invariant, and each known bug put back
must be reported (a simulation that cannot fail proves nothing).  ``make sim`` runs more seeds;
docs/reliability.md has the long runs."""

from __future__ import annotations

import os

import pytest

from tests.sim.mutations import MUTATIONS
from tests.sim.scenario import run_seed

# About a minute on one core of the CI machine.
SEEDS = int(os.environ.get("SIM_SEEDS", "120"))

# Each mutation, the invariant it must break, and how many seeds (from 1) may be tried before it
# is found: the long runs (docs/reliability.md) measured each one's rate.
CAUGHT = {
    "published_without_ack": ("published_without_record", 10),
    "bystanders_blamed": ("delayed_for_another", 40),
    "sender_not_joined": ("last_copy_order", 60),
}


def test_every_seed_keeps_every_invariant() -> None:
    failed = []
    for seed in range(1, SEEDS + 1):
        report = run_seed(seed)
        if not report.ok:
            failed.append(f"seed {seed}: {report.violations[0]} -> {report.repro()}")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("mutation", sorted(CAUGHT))
def test_a_known_bug_put_back_is_reported(mutation: str) -> None:
    invariant, budget = CAUGHT[mutation]
    assert mutation in MUTATIONS
    for seed in range(1, budget + 1):
        report = run_seed(seed, mutation)
        if any(v.name == invariant for v in report.violations):
            return
    pytest.fail(f"{mutation}: no {invariant} violation in {budget} seeds")
