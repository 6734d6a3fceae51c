"""The simulated world: one thread, simulated time, actors scheduled by a seeded random source.

Every actor (a Lambda invocation, a writer, the janitor of a fault schedule) is a greenlet. It runs
until it calls :meth:`World.pause` (a statement's round trip, a sleep, a wait on Kafka), which hands
control back to the scheduler; the scheduler resumes whichever actor is due first in simulated
time, ties broken by the seed.  Nothing else runs in between, so a seed replays exactly: every
source of nondeterminism (time, randomness, the order of concurrent steps) comes from here.

A process can be frozen (its actors and timers wait until it thaws) or killed (its actors raise
:class:`Killed` at their next pause, and every port call they make after that raises it too).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet


class Killed(BaseException):
    """Raised in an actor whose process was killed (SIGKILL): nothing it does lands any more."""


class Hung(Exception):
    """The simulation made no progress in simulated time for too many steps (a busy loop)."""


@dataclass(eq=False)
class Process:
    """A Lambda execution environment (or a writer's host): frozen and killed as a whole."""

    name: str
    frozen_until: float = 0.0
    killed: bool = False
    parked: list[_Entry] = field(default_factory=list)  # what came due while it was frozen
    runs: int = 0  # invocations started in it


@dataclass(eq=False)
class Actor:
    name: str
    process: Process
    glet: greenlet.greenlet
    ticket: int = 0  # the live entry in the queue; older entries are stale
    done: bool = False
    error: BaseException | None = None
    result: Any = None


# A queue entry: (at, tiebreak, seq, actor, ticket, call, process).  A plain tuple, so the heap
# compares it in C; seq is unique, so the comparison never reaches the actor.
_Entry = tuple[float, float, int, "Actor | None", int, "Callable[[], None] | None", "Process | None"]


class World:
    """The scheduler: simulated time (seconds) and the seeded random source everything draws from."""

    MAX_STEPS_AT_ONE_TIME = 200_000

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[_Entry] = []
        self._seq = itertools.count()
        self._hub = greenlet.getcurrent()
        self.current: Actor | None = None
        self.steps = 0
        self.actors: list[Actor] = []
        self._until = float("-inf")  # the bound of the current run()
        self._same_time, self._last = 0, -1.0

    # --- actors -------------------------------------------------------------------------

    def spawn(self, name: str, process: Process, fn: Callable[[], Any], delay: float = 0.0) -> Actor:
        actor: Actor

        def body() -> None:
            try:
                actor.result = fn()
            except Killed:
                pass
            except BaseException as exc:
                actor.error = exc
            finally:
                actor.done = True

        actor = Actor(name, process, greenlet.greenlet(body, parent=self._hub))
        self.actors.append(actor)
        self._schedule(actor, self.now + delay)
        return actor

    def pause(self, seconds: float) -> None:
        """The current actor waits ``seconds`` of simulated time; others may run meanwhile."""
        actor = self._me()
        when = self.now + max(0.0, seconds)
        queue = self._queue
        if (
            when > self.now
            and when <= self._until
            and (not queue or queue[0][0] > when)
            and actor.process.frozen_until <= when
        ):
            # Nothing else is due before this actor wakes: the scheduler would pop its entry next,
            # so step time here.  The same draws as a scheduled entry, so seeds replay as before.
            actor.ticket += 1
            self.rng.random()
            next(self._seq)
            self._step(when)
        else:
            self._schedule(actor, when)
            self._hub.switch()
        if actor.process.killed:
            raise Killed

    def check(self) -> None:
        """Raise :class:`Killed` in an actor whose process is dead (every port call starts here)."""
        actor = self.current
        if actor is not None and actor.process.killed:
            raise Killed

    def block(self) -> Actor:
        """Take the current actor off the queue: it sleeps until :meth:`wake` (or its timeout)."""
        return self._me()

    def wait(self, timeout: float) -> None:
        """Sleep until woken by :meth:`wake` or ``timeout`` passes."""
        self.pause(timeout)

    def wake(self, actor: Actor) -> None:
        if not actor.done:
            self._schedule(actor, self.now)

    def at(self, when: float, call: Callable[[], None], process: Process | None = None) -> None:
        """Run ``call`` at simulated time ``when`` (a timer: an event of the network or a broker).
        A timer of a frozen process waits for the thaw; one of a killed process never runs."""
        tiebreak = self.rng.random()
        heapq.heappush(self._queue, (when, tiebreak, next(self._seq), None, 0, call, process))

    def _me(self) -> Actor:
        if self.current is None:
            raise RuntimeError("World.pause outside an actor")
        return self.current

    def _schedule(self, actor: Actor, when: float) -> None:
        actor.ticket += 1
        tiebreak = self.rng.random()
        heapq.heappush(self._queue, (when, tiebreak, next(self._seq), actor, actor.ticket, None, None))

    # --- faults -------------------------------------------------------------------------

    def freeze(self, process: Process, until: float = float("inf")) -> None:
        """Nothing of ``process`` runs before ``until`` (inf: until :meth:`thaw`)."""
        process.frozen_until = max(process.frozen_until, until)
        if until != float("inf"):
            self.at(until, lambda: self.thaw(process))

    def thaw(self, process: Process) -> None:
        if process.frozen_until > self.now:
            process.frozen_until = self.now
        parked, process.parked = process.parked, []
        for _, tiebreak, _, actor, ticket, call, owner in parked:
            heapq.heappush(self._queue, (self.now, tiebreak, next(self._seq), actor, ticket, call, owner))

    def kill(self, process: Process) -> None:
        process.killed = True

    # --- the loop -----------------------------------------------------------------------

    def run(self, until: float) -> None:
        """Step actors and timers in time order until ``until`` or nothing is left to run."""
        self._until = until
        queue = self._queue
        while queue:
            entry = queue[0]
            at, _, _, actor, ticket, call, process = entry
            if at > until:
                break
            heapq.heappop(queue)
            if actor is not None:
                if ticket != actor.ticket or actor.done:
                    continue
                process = actor.process
            if process is not None and process.frozen_until > at and not process.killed:
                process.parked.append(entry)  # frozen: it runs when the process thaws
                continue
            self._step(at)
            if call is not None:
                if process is None or not process.killed:
                    call()
                continue
            assert actor is not None
            self.current = actor
            try:
                actor.glet.switch()
            finally:
                self.current = None
        self._until = float("-inf")
        self.now = max(self.now, until) if not queue else self.now

    def _step(self, at: float) -> None:
        self.now = max(self.now, at)
        self.steps += 1
        self._same_time = self._same_time + 1 if self.now == self._last else 0
        self._last = self.now
        if self._same_time > self.MAX_STEPS_AT_ONE_TIME:
            raise Hung(f"no progress in simulated time at t={self.now:.3f}")

    def alive(self, actor: Actor) -> bool:
        return not actor.done


class SimClock:
    """The relay's :class:`~outbox_relay.ports.Clock` in simulated time."""

    def __init__(self, world: World) -> None:
        self.world = world

    def monotonic(self) -> float:
        self.world.check()
        return self.world.now

    def sleep(self, seconds: float) -> None:
        self.world.pause(seconds)
