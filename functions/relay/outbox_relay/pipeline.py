"""The pipeline's second stage: a batch Kafka has answered, and its fenced finalize, which runs
while the next batch is read and sent."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .model import AggregateKey, FinalizePlan, FinalizeResult
from .ports import OutboxStore


@dataclass(slots=True)
class Batch:
    """One batch.  It is finalized one pass later, while the next batch is on the wire; until
    then its rows stay PENDING, so the next read leaves them out (``in_flight``) and holds back
    the aggregates it did not deliver in full (``unsettled``)."""

    plan: FinalizePlan = field(default_factory=FinalizePlan)
    in_flight: dict[int, list[int]] = field(default_factory=dict)
    unsettled: dict[int, set[AggregateKey]] = field(default_factory=dict)
    unavailable: str | None = None
    topic_waits: int = 0


class Finalizer:
    """The fenced finalize of one batch at a time.  Given a store of its own (a second
    connection) it runs in a worker thread, overlapping the next batch's read and send; else it
    runs inline when started."""

    def __init__(self, store: OutboxStore, background: OutboxStore | None) -> None:
        self.store = background or store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="outbox-finalize") if background else None
        self.pending: tuple[Batch, Future[FinalizeResult] | FinalizeResult | None] | None = None

    def start(self, token: bytes, owned: list[int], step: Batch, lease_seconds: float) -> None:
        if not step.plan or not owned:
            self.pending = (step, None)
            return
        args = (token, list(owned), step.plan, lease_seconds)
        if self.pool is not None:
            self.pending = (step, self.pool.submit(self.store.finalize, *args))
        else:
            self.pending = (step, None)  # recorded first: a failing inline finalize is not retried
            self.pending = (step, self.store.finalize(*args))

    def join(self) -> tuple[Batch, FinalizeResult | None] | None:
        if self.pending is None:
            return None
        step, outcome = self.pending
        self.pending = None
        return step, outcome.result() if isinstance(outcome, Future) else outcome

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
