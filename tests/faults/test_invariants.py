"""The invariant checker catches what it is there to catch (it must be able to fail)."""

from __future__ import annotations

from outbox_relay.kafka_tools import ConsumedRecord
from tests.faults.invariants import Row, check


def row(n: int, seq: int, status: str = "PUBLISHED", key: str = "A", error: str | None = None) -> Row:
    return Row(n, f"e{n}", "t", key, seq, status, b"{}", error, status == "PENDING" and error is not None)


def record(n: int, seq: int, offset: int, key: str = "A", value: bytes = b"{}") -> ConsumedRecord:
    return ConsumedRecord(
        "t", 0, offset, key.encode(), value, {"id": f"e{n}".encode(), "seq": str(seq).encode()}
    )


def test_a_clean_run_passes() -> None:
    rows = [row(1, 1), row(2, 2), row(3, 3, "DEAD", error="too large")]
    records = [record(1, 1, 0), record(2, 2, 1), record(1, 1, 2), record(2, 2, 3)]
    verdict = check(rows, records, [{"event_id": "e3", "reason": "too large"}])
    assert verdict.ok and verdict.duplicates == 2 and verdict.dead == 1


def test_a_published_row_missing_from_kafka_is_lost() -> None:
    verdict = check([row(1, 1), row(2, 2)], [record(1, 1, 0)], [])
    assert not verdict.ok and verdict.lost == ["row 2 (e2) PUBLISHED but not in Kafka"]


def test_last_copies_out_of_order_are_violations() -> None:
    records = [record(1, 1, 0), record(2, 2, 1), record(1, 1, 2)]  # e1's last copy after e2
    verdict = check([row(1, 1), row(2, 2)], records, [])
    assert verdict.order_violations == ["t key b'A': seq 1 after 2"]


def test_copies_that_differ_are_not_duplicates_but_errors() -> None:
    verdict = check([row(1, 1)], [record(1, 1, 0), record(1, 1, 1, value=b'{"x": 1}')], [])
    assert not verdict.ok and verdict.unequal_copies


def test_dead_rows_need_their_dead_letter_and_letters_need_a_dead_row() -> None:
    rows = [row(1, 1, "DEAD", error="bad"), row(2, 2)]
    verdict = check(rows, [record(2, 2, 0)], [{"event_id": "e2", "reason": "x"}])
    assert verdict.dead_without_letter and verdict.letters_without_dead_row


def test_a_pending_row_without_a_reason_is_stuck() -> None:
    verdict = check([row(1, 1, "PENDING"), row(2, 2, "PENDING", error="backing off")], [], [])
    assert verdict.stuck == [1]
