"""Known bugs, put back on purpose: the simulation must report each (``--mutation NAME``).

A simulation that never fails measures nothing.  Each mutation re-introduces one bug the
simulation was built to find, as a patch applied for one seed's run; tests/sim/test_sim.py checks
that the seeds listed for it report the invariant it breaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from outbox_relay.model import AggregateKey, OutboxRecord

from . import store as sim_store


@contextlib.contextmanager
def keys_before_heads() -> Iterator[None]:
    """Finding 2: the aggregates pending at or below a cursor asked BEFORE the head read (two
    statements): a row committed in between is missed and a later row of its aggregate overtakes
    it.  Here the store answers ``pending_keys_up_to`` as of the moment just before the read."""
    read_heads, pending_keys = sim_store.SimStore.read_heads, sim_store.SimStore.pending_keys_up_to
    asked: dict[int, dict[tuple[int, int], set[AggregateKey]]] = {}

    def mutated_read(
        self: sim_store.SimStore,
        cursors: Mapping[int, int],
        limit: int,
        exclude: Mapping[int, Sequence[int]] | None = None,
        skip: Mapping[int, Collection[AggregateKey]] | None = None,
    ) -> list[OutboxRecord]:
        answers = asked.setdefault(id(self), {})
        answers.clear()
        for shard, cursor in cursors.items():
            if cursor:
                answers[(shard, cursor)] = pending_keys(self, shard, cursor)
        return read_heads(self, cursors, limit, exclude, skip)

    def mutated_keys(self: sim_store.SimStore, shard: int, max_id: int) -> set[AggregateKey]:
        earlier = asked.get(id(self), {}).pop((shard, max_id), None)
        return earlier if earlier is not None else pending_keys(self, shard, max_id)

    sim_store.SimStore.read_heads = mutated_read  # type: ignore[method-assign]
    sim_store.SimStore.pending_keys_up_to = mutated_keys  # type: ignore[method-assign]
    try:
        yield
    finally:
        sim_store.SimStore.read_heads = read_heads  # type: ignore[method-assign]
        sim_store.SimStore.pending_keys_up_to = pending_keys  # type: ignore[method-assign]


MUTATIONS: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "keys_before_heads": keys_before_heads,
}
