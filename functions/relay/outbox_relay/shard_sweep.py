"""Reading a shard: which aggregates its next read leaves out, and how it reaches the rest.

A rule over one run's reads, kept apart from the run loop (see README, "Reading a shard"):

* **Blocked aggregates are skipped in the read.**  An aggregate whose head cannot go (in backoff,
  its topic missing, its dead letter not taken) is left out of the shard's next reads by name
  (up to ``MAX_SKIPPED_KEYS`` of them), so the rest of the shard is reached in one read.
* **Until it is due.**  Each block ends when the head's wait does (its ``available_at``, or the
  delay the relay just chose); the shard is then read again.
* **A page with nothing to send is read by aggregate heads instead.**  When a shard's read (in id
  order) comes back full and holds no row the head-of-line rule could send, the shard is read
  from then on (for the rest of the run) by its aggregates' heads: the due heads, oldest first,
  each with the rows behind it, found in an index of the aggregates' pending rows.  However many
  aggregates are blocked and however many rows wait behind them, a sendable row is reached in the
  same pass, and none of the blocked rows is read.
* **A shard with nothing to send rests** until one of its blocks ends (or the next run): a run
  never spins on blocked work, and it ends ``drained`` only when no shard has a row it could send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .model import AggregateKey, OutboxRecord

# Blocked aggregates a shard's read in id order leaves out in SQL (by name).
MAX_SKIPPED_KEYS = 100


class Block(NamedTuple):
    reason: str
    until: float  # monotonic seconds: the head is due again then
    head: int  # the blocked row


# A block ends this much after the head is due by the relay's clock: the database's due time is
# a little later (it counts from its own commit), and a head read a moment early is blocked again.
EXPIRY_SLACK_SECONDS = 0.1


@dataclass(slots=True)
class ShardSweep:
    """How the next read of a shard goes: the aggregates it leaves out (blocked: why, and until
    when), and whether it reads by aggregate heads (``by_heads``) rather than in id order."""

    by_heads: bool = False
    idle: bool = False
    blocked: dict[AggregateKey, Block] = field(default_factory=dict)

    def block(self, key: AggregateKey, reason: str, until: float, head: int) -> None:
        self.blocked[key] = Block(reason[:300], until + EXPIRY_SLACK_SECONDS, head)

    def expire(self, now: float) -> None:
        """Drop the blocks that are over: the shard is read again."""
        due = [key for key, block in self.blocked.items() if block.until <= now]
        for key in due:
            del self.blocked[key]
        if due:
            self.idle = False


def starved(
    records: Iterable[OutboxRecord], shards: Iterable[int], limit: int, blocked: set[AggregateKey]
) -> set[int]:
    """The shards whose page (``limit`` rows in id order) came back full without a row the
    head-of-line rule could send: rows of blocked aggregates (``blocked``, or behind a head not
    due) fill it, and more may follow.  They are read by aggregate heads instead."""
    rows: dict[int, int] = dict.fromkeys(shards, 0)
    sendable: set[int] = set()
    held = set(blocked)
    for record in records:
        rows[record.shard] += 1
        if record.key in held:
            continue
        if not record.due:
            held.add(record.key)
            continue
        sendable.add(record.shard)
    return {shard for shard, count in rows.items() if count >= limit and shard not in sendable}


def advance(
    by_shard: Mapping[int, list[OutboxRecord]], sweeps: Mapping[int, ShardSweep], progress: set[int]
) -> None:
    """After a pass: a shard that sent, deferred or finalized rows is read again; any other had
    nothing it could send (what is left is blocked) and rests until a block ends."""
    for shard in by_shard:
        if shard not in progress:
            sweeps[shard].idle = True


def blocked_of(sweeps: Iterable[ShardSweep]) -> dict[AggregateKey, str]:
    """The aggregates found blocked on these shards, and why."""
    out: dict[AggregateKey, str] = {}
    for sweep in sweeps:
        out.update({key: block.reason for key, block in sweep.blocked.items()})
    return out
