"""Reading a shard: which aggregates its next read leaves out, and where it starts.

A rule over one run's reads, kept apart from the run loop (see README, "Reading a shard"):

* **Blocked aggregates are skipped in the read.**  An aggregate whose head cannot go (in backoff,
  its topic missing, its dead letter not taken) is left out of the shard's next reads by name,
  however many rows pile up behind it, so the rest of the shard is reached in one read.
* **Until it is due.**  Each block ends when the head's wait does (its ``available_at``, or the
  delay the relay just chose); the shard is then read again from that head.
* **Paging is the fallback.**  Past ``MAX_SKIPPED_KEYS`` blocked aggregates, or when a full page
  held nothing new to leave out, the read moves on past the page.  Rows of blocked aggregates at
  the start of a page are stepped over even while the shard sends (never past a row in flight).
* **A shard gives up for the run** after ``MAX_SKIP_PAGES`` re-reads found nothing to send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .model import AggregateKey, OutboxRecord

# How many re-reads of one shard in a run may find nothing to send (each one skipping what it found
# blocked) before the shard is left for the next run.
MAX_SKIP_PAGES = 50
# Blocked aggregates a shard's read leaves out in SQL; more are skipped by paging past them.
MAX_SKIPPED_KEYS = 100


class Block(NamedTuple):
    reason: str
    until: float  # monotonic seconds: the head is due again then
    head: int  # the blocked row: reads resume below it when the block ends


# A block ends this much after the head is due by the relay's clock: the database's due time is
# a little later (it counts from its own commit), and a head read a moment early is blocked again.
EXPIRY_SLACK_SECONDS = 0.1


@dataclass(slots=True)
class ShardSweep:
    """How the next read of a shard goes: the aggregates it leaves out (blocked: why, and until
    when), and where it starts (``cursor`` > 0 only while paging past blocked rows)."""

    cursor: int = 0
    skipped_pages: int = 0
    idle: bool = False
    blocked: dict[AggregateKey, Block] = field(default_factory=dict)

    def block(self, key: AggregateKey, reason: str, until: float, head: int) -> None:
        self.blocked[key] = Block(reason[:300], until + EXPIRY_SLACK_SECONDS, head)

    def expire(self, now: float) -> None:
        """Drop the blocks that are over.  A head may lie below the cursor: the next read starts
        just below the lowest one again (not at the shard's start: with many blocked aggregates
        expiring one after another, the read would never get further)."""
        due = [key for key, block in self.blocked.items() if block.until <= now]
        if due:
            lowest = min(self.blocked[key].head for key in due)
            for key in due:
                del self.blocked[key]
            self.cursor = min(self.cursor, max(0, lowest - 1))
            self.idle = False


def advance(
    by_shard: Mapping[int, list[OutboxRecord]],
    sweeps: Mapping[int, ShardSweep],
    limit: int,
    progress: set[int],
    found: set[int],
    in_flight: Mapping[int, Iterable[int]],
) -> None:
    """Where each shard's next read starts.  A shard whose page was full of blocked rows is read
    again leaving out the aggregates it just found blocked; past ``MAX_SKIPPED_KEYS`` of them (or
    when it found none), it pages on.  ``in_flight``: ids sent and not finalized yet, per shard."""
    for shard, rows in by_shard.items():
        sweep = sweeps[shard]
        if shard in progress:
            # Re-read from the same place (what was finalized is gone, or deferred), but step
            # over the blocked rows the page starts with: a busy shard with more blocked
            # aggregates than a read leaves out would otherwise read them again every pass.
            sweep.cursor = max(
                sweep.cursor, _blocked_lead(rows, sweep, min(in_flight.get(shard, ()), default=0))
            )
            continue
        if len(rows) < limit or sweep.skipped_pages >= MAX_SKIP_PAGES:
            sweep.idle = True  # everything left is blocked until a later run (or a block ends)
            continue
        sweep.skipped_pages += 1
        if shard not in found or len(sweep.blocked) > MAX_SKIPPED_KEYS:
            sweep.cursor = rows[-1].id  # a full page, all blocked: look past it


def _blocked_lead(rows: list[OutboxRecord], sweep: ShardSweep, first_in_flight: int) -> int:
    """The id of the last row of the page's leading run of blocked aggregates' rows (0: none),
    stopping before a row in flight (its aggregate is not blocked; moving past it would be)."""
    last = 0
    for row in rows:
        if row.key not in sweep.blocked or (first_in_flight and row.id >= first_in_flight):
            break
        last = row.id
    return last


def blocked_of(sweeps: Iterable[ShardSweep]) -> dict[AggregateKey, str]:
    """The aggregates found blocked on these shards, and why."""
    out: dict[AggregateKey, str] = {}
    for sweep in sweeps:
        out.update({key: block.reason for key, block in sweep.blocked.items()})
    return out
