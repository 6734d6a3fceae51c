"""Reading a shard: which aggregates its next read leaves out, and where it starts.

A rule over one run's reads, kept apart from the run loop (see README, "Reading a shard"):

* **Blocked aggregates are skipped in the read.**  An aggregate whose head cannot go (in backoff,
  its topic missing, its dead letter not taken) is left out of the shard's next reads by name,
  however many rows pile up behind it, so the rest of the shard is reached in one read.
* **Paging is the fallback.**  Past ``MAX_SKIPPED_KEYS`` blocked aggregates, or when a full page
  held nothing new to leave out, the read moves on past the page instead.
* **A shard gives up for the run** after ``MAX_SKIP_PAGES`` such re-reads found nothing to send.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .model import AggregateKey, OutboxRecord

# How many re-reads of one shard in a run may find nothing to send (each one skipping what it found
# blocked) before the shard is left for the next run.
MAX_SKIP_PAGES = 50
# Blocked aggregates a shard's read leaves out in SQL; more are skipped by paging past them.
MAX_SKIPPED_KEYS = 100


@dataclass(slots=True)
class ShardSweep:
    """How the next read of a shard goes: the aggregates it leaves out (blocked, and why), and
    where it starts (``cursor`` > 0 only while paging past more blocked aggregates than a read
    can leave out)."""

    cursor: int = 0
    skipped_pages: int = 0
    idle: bool = False
    blocked: dict[AggregateKey, str] = field(default_factory=dict)


def advance(
    by_shard: dict[int, list[OutboxRecord]],
    sweeps: dict[int, ShardSweep],
    limit: int,
    progress: set[int],
    found: set[int],
) -> None:
    """Where each shard's next read starts (see README, "Reading a shard").  A shard whose
    page was full of blocked rows is read again leaving out the aggregates it just found
    blocked; past ``MAX_SKIPPED_KEYS`` of them (or when it found none), it pages on."""
    for shard, rows in by_shard.items():
        sweep = sweeps[shard]
        if shard in progress:
            continue  # re-read from the same place: what was finalized is gone, or deferred
        if len(rows) < limit or sweep.skipped_pages >= MAX_SKIP_PAGES:
            sweep.idle = True  # everything left is blocked until a later run
            continue
        sweep.skipped_pages += 1
        if shard not in found or len(sweep.blocked) > MAX_SKIPPED_KEYS:
            sweep.cursor = rows[-1].id  # a full page, all blocked: look past it


def blocked_of(sweeps: Iterable[ShardSweep]) -> dict[AggregateKey, str]:
    """The aggregates found blocked on these shards, and why."""
    out: dict[AggregateKey, str] = {}
    for sweep in sweeps:
        out.update(sweep.blocked)
    return out
