"""Guarantee: dead letters built from hostile rows reach the queue and read back as sent, and
what was sent meets SQS's documented rules (tests/sqs_rules.py), which moto does not enforce:
moto takes U+FFFE, U+FFFF and control characters that SQS refuses, and counts a body's size in
characters where SQS counts UTF-8 bytes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay.dead_letters import STILL_SENDING, DeadLetterDispatch
from outbox_relay.deadletter_sqs import PAYLOAD_OMITTED, SqsDeadLetterSink, dead_letter_body
from outbox_relay.model import DeadLetter, OutboxRecord
from outbox_relay.ports import SystemClock
from tests import support
from tests.sqs_rules import sqs_accepts, sqs_refusal
from tests.unit.test_deadletter import _any_letter, _check_body

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


@pytest.fixture
def sqs(local_stack: None) -> SQSClient:
    return boto3.client("sqs", endpoint_url=support.MOTO)


def _queue(sqs: SQSClient, max_bytes: int) -> Iterator[str]:
    url = sqs.create_queue(
        QueueName=f"dlq-{uuid.uuid4().hex[:12]}", Attributes={"MaximumMessageSize": str(max_bytes)}
    )["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def queue_4k(sqs: SQSClient) -> Iterator[str]:
    yield from _queue(sqs, 4096)


@pytest.fixture
def queue_1k(sqs: SQSClient) -> Iterator[str]:
    yield from _queue(sqs, 1024)


def _drain(sqs: SQSClient, url: str) -> list[str]:
    """Every body in the queue, deleted as read."""
    out: list[str] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        for m in batch:
            out.append(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_moto_takes_what_sqs_refuses(sqs: SQSClient, queue_1k: str) -> None:
    """Why passing moto is not enough: these would be refused by SQS every time.  If moto grows
    stricter, this test says so and the validator still stands."""
    lax = ["a\ufffeb", "a\uffffb", "a\x00b", "a\x07b", "é" * 1000]  # the last: 1,000 chars, 2,000 bytes
    for body in lax:
        assert sqs_refusal(body, 1024) is not None
        sent = sqs.send_message_batch(QueueUrl=queue_1k, Entries=[{"Id": "0", "MessageBody": body}])
        assert [ok["Id"] for ok in sent.get("Successful", [])] == ["0"], sent
    assert sorted(_drain(sqs, queue_1k)) == sorted(lax)


def _hostile_rows() -> list[DeadLetter]:
    """Hand-picked: each breaks one of SQS's rules if sent as it is."""
    rows = [
        ("U+FFFE/U+FFFF", "o-\ufffe\uffff", b'{"k":"\xef\xbf\xbe\xef\xbf\xbf"}', None),
        ("controls", "o-\x00\x01\x1b", b'{"k":"\x00\x07"}', '{"h":"\x0b\x0c"}'),
        ("lone surrogates", "o-\ud800", b"{}", '{"h":"\udfff\ud83d"}'),
        ("invalid UTF-8", "o-bin", b"\xff\xfe\xed\xa0\x80\xc0\xaf", None),
        ("payload over the queue's size", "o-big", ("€" * 3000).encode(), None),
        ("headers and reason over the queue's size" * 200, "o-headers", b"{}", "\uffff" * 50_000),
        ("aggregate id over the queue's size", "é" * 20_000, b"{}", None),
        ("legal non-ASCII", "o-\U0001f600", "日本語".encode(), '{"h":"é"}'),
    ]
    return [
        DeadLetter(
            OutboxRecord(n, str(uuid.uuid4()), "order", agg, "Evt", payload, None, headers, 1, 3, 0, True),
            f"{why}\x00\ufffe",
            "outbox.event.order",
        )
        for n, (why, agg, payload, headers) in enumerate(rows, start=1)
    ]


def _send_and_read(sqs: SQSClient, url: str, letters: list[DeadLetter], max_bytes: int) -> dict[int, str]:
    sink = SqsDeadLetterSink(sqs, url, max_bytes)
    acknowledged: list[int] = []
    assert sink.send(letters, acknowledged.append) == [None] * len(letters)
    assert sorted(acknowledged) == list(range(len(letters))), "each letter reported once, by its index"
    bodies = _drain(sqs, url)
    by_id = {json.loads(b)["outbox_id"]: b for b in bodies}
    assert len(by_id) == len(bodies) == len(letters)
    return by_id


def test_hostile_rows_reach_the_queue_as_letters_sqs_accepts(sqs: SQSClient, queue_4k: str) -> None:
    letters = _hostile_rows()
    received = _send_and_read(sqs, queue_4k, letters, 4096)

    for letter in letters:
        body = received[letter.record.id]
        assert body == dead_letter_body(letter, 4096), "read back as sent"
        parsed = _check_body(body, letter, 4096)  # SQS's rules, and the fields as they are or cut
        assert parsed["event_id"] == letter.record.event_id
    big = json.loads(received[5])
    assert big["payload_omitted"] == PAYLOAD_OMITTED and big["payload_bytes"] == 9000
    assert set(json.loads(received[6])["truncated"]) == {"headers", "reason"}
    assert json.loads(received[8])["payload"] == "日本語"


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(letters=st.lists(_any_letter, min_size=1, max_size=12, unique_by=lambda d: d.record.id))
def test_generated_hostile_rows_read_back_as_sent(local_stack: None, letters: list[DeadLetter]) -> None:
    sqs = boto3.client("sqs", endpoint_url=support.MOTO)
    for url in _queue(sqs, 4096):  # one queue per example (a fixture would be shared by all)
        received = _send_and_read(sqs, url, letters, 4096)
        for letter in letters:
            assert received[letter.record.id] == dead_letter_body(letter, 4096)
            _check_body(received[letter.record.id], letter, 4096)


def test_a_letter_the_queue_refuses_is_acknowledged_reduced(sqs: SQSClient, queue_1k: str) -> None:
    """The sink set for more than the queue takes (``max_bytes`` above its MaximumMessageSize):
    moto refuses the request as a whole (InvalidParameterValue), which names no letter; they all
    go again with ids and reason only, acknowledged instead of blocking their rows for ever."""
    letters = [*_hostile_rows()[:3], _hostile_rows()[5]]  # the last: reason and headers cut to 8 KiB
    big = letters[0].record
    letters[0] = DeadLetter(
        OutboxRecord(big.id, big.event_id, "order", "o-big", "Evt", b"x" * 3000, None, None, 1, 3, 0, True),
        "payload too large",
        None,
    )
    received = _send_and_read(sqs, queue_1k, letters, 8192)

    for letter in letters:
        body = received[letter.record.id]
        assert sqs_accepts(body, 1024) and body.isascii()
        parsed = json.loads(body)
        assert parsed["event_id"] == letter.record.event_id
        assert "InvalidParameterValue" in parsed["refused"]
        assert not {"payload", "payload_base64", "headers"} & set(parsed)


class _StallingClient:
    """The real client, except that the ``stall_at``-th SendMessageBatch waits for ``release``
    before it goes out (a frozen process, a request that hangs past the run's deadline)."""

    def __init__(self, sqs: SQSClient, stall_at: int) -> None:
        self.sqs, self.stall_at, self.batches = sqs, stall_at, 0
        self.release = threading.Event()

    def send_message_batch(self, **request: Any) -> Any:
        self.batches += 1
        if self.batches == self.stall_at:
            assert self.release.wait(30)
        return self.sqs.send_message_batch(**request)


def test_a_send_cut_by_the_deadline_keeps_what_landed_and_never_sends_a_letter_twice(
    sqs: SQSClient, queue_4k: str
) -> None:
    """25 letters, three requests; the second hangs past the deadline.  The first 10 count as
    acknowledged; the 15 others are not sent again while the abandoned call may land them, and
    once it did, their rows may become DEAD without a new send: one letter per row."""
    client = _StallingClient(sqs, stall_at=2)
    dispatch = DeadLetterDispatch(SqsDeadLetterSink(client, queue_4k), pause_seconds=0)  # type: ignore[arg-type]
    letters = [DeadLetter(_record(n), "poison", None) for n in range(1, 26)]

    answers = dispatch.send(letters, SystemClock(), time.monotonic() + 1.5)
    assert answers[:10] == [None] * 10, "acknowledged before the deadline: these rows become DEAD"
    assert all(a is not None and "the run's deadline" in a for a in answers[10:])

    rest = letters[10:]
    assert dispatch.send(rest, SystemClock(), time.monotonic() + 5) == [STILL_SENDING] * 15
    client.release.set()  # the thaw: the abandoned call sends batches 2 and 3
    assert support.wait_until(lambda: dispatch.abandoned() == 15 and client.batches == 3, timeout=10)
    assert support.wait_until(
        lambda: not any(t.name == "outbox-bounded-call" for t in threading.enumerate()), 10
    )
    assert dispatch.send(rest, SystemClock(), time.monotonic() + 5) == [None] * 15
    assert client.batches == 3, "no letter was sent again"

    ids = sorted(json.loads(b)["outbox_id"] for b in _drain(sqs, queue_4k))
    assert ids == list(range(1, 26)), "exactly one letter per row"


def _record(n: int) -> OutboxRecord:
    return OutboxRecord(n, f"event-{n}", "order", f"o-{n}", "Evt", b"{}", None, None, 1, 3, 0, True)
