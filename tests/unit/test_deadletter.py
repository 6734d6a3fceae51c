"""The SQS dead-letter sink without AWS: laziness, per-message acknowledgements, bodies that SQS's
documented rules accept whatever the row holds (tests/sqs_rules.py), and letters SQS refuses."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_relay.deadletter_sqs import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MIN_MESSAGE_BYTES,
    TRUNCATED,
    SqsDeadLetterSink,
    dead_letter_body,
    refused_body,
)
from outbox_relay.model import DeadLetter, OutboxRecord
from outbox_relay.ports import DeadLetterQueueDown
from tests.sqs_rules import DocumentedSqs, batch_refusal, sqs_accepts, sqs_refusal


def _letter(n: int) -> DeadLetter:
    record = OutboxRecord(
        n, f"evt-{n}", "order", f"o-{n}", "OrderCreated", b"{}", None, None, None, 3, 0, True
    )
    return DeadLetter(record, "payload is not valid JSON", "outbox.event.order")


class FakeSqs:
    def __init__(self, fail_ids: set[str]) -> None:
        self.fail_ids = fail_ids
        self.sent: list[dict[str, Any]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.sent += Entries
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in self.fail_ids],
            "Failed": [
                {"Id": e["Id"], "Code": "Throttled", "Message": "slow down"}
                for e in Entries
                if e["Id"] in self.fail_ids
            ],
        }


def test_the_client_is_built_on_the_first_dead_letter_only() -> None:
    built: list[FakeSqs] = []

    def factory() -> Any:
        built.append(FakeSqs(fail_ids={"1"}))
        return built[-1]

    sink = SqsDeadLetterSink(factory, "https://sqs.example/dlq")
    assert built == []  # a run without dead letters never pays for a boto3 client
    assert sink.send([_letter(1), _letter(2)]) == [None, "Throttled: slow down"]
    sink.send([_letter(3)])
    assert len(built) == 1 and len(built[0].sent) == 3


def test_a_ready_client_is_used_as_is() -> None:
    client = FakeSqs(fail_ids=set())
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq")  # type: ignore[arg-type]
    assert sink.send([_letter(7)]) == [None]
    assert '"outbox_id":7' in client.sent[0]["MessageBody"]


class StalledSqs:
    """Every call ends in botocore's read timeout (after the client's own bounded tries)."""

    def __init__(self) -> None:
        self.calls = 0

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls += 1
        raise ReadTimeoutError(endpoint_url="https://sqs.example")


def test_after_a_call_that_failed_as_a_whole_the_later_batches_are_not_tried() -> None:
    client = StalledSqs()
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq")  # type: ignore[arg-type]
    with pytest.raises(DeadLetterQueueDown) as down:  # the queue's failure, not the letters'
        sink.send([_letter(n) for n in range(25)])  # three batches of up to 10
    assert client.calls == 1, "each try would wait out the same timeout"
    assert str(down.value) == 'Read timeout on endpoint URL: "https://sqs.example"'
    assert down.value.results == [str(down.value)] * 25


# --- bodies SQS accepts, whatever the row holds (its documented rules: tests/sqs_rules.py) ----

# What SQS refuses or JSON must escape: C0 controls, surrogates (a Python str can hold lone ones),
# the non-characters U+FFFE/U+FFFF; and legal neighbours at the edges of the allowed ranges.
HOSTILE = "\x00\x01\x08\t\n\x0b\x0c\r\x1b\x1f\x7f\x85\ud7ff\ud800\udbff\udc00\udfff\ue000\ufffd\ufffe\uffff"
HOSTILE += '\U00010000\U0010ffff\u2028"\\é€'

_chars = st.one_of(st.sampled_from(HOSTILE), st.characters(exclude_categories=()))
_short = st.text(alphabet=_chars, max_size=40)
# Fields far beyond any body: a short piece repeated (cheap to draw, costly to send).
_huge = st.tuples(st.text(alphabet=_chars, min_size=1, max_size=8), st.integers(100, 40_000)).map(
    lambda t: t[0] * t[1]
)
_text = st.one_of(_short, _short, _huge)
_payload = st.one_of(
    st.binary(max_size=64),
    _short.map(lambda s: s.encode("utf-8", "surrogatepass")),  # invalid UTF-8 when it holds surrogates
    st.tuples(st.binary(min_size=1, max_size=8), st.integers(100, 120_000)).map(lambda t: t[0] * t[1]),
    st.tuples(_short.filter(bool), st.integers(100, 40_000)).map(
        lambda t: (t[0] * t[1]).encode("utf-8", "surrogatepass")
    ),
)
_record = st.builds(
    OutboxRecord,
    id=st.integers(1, 2**63 - 1),
    event_id=st.one_of(st.uuids().map(str), _text),
    aggregate_type=_text,
    aggregate_id=_text,
    event_type=_text,
    payload=_payload,
    topic=st.none() | _text,
    headers=st.none() | _text,
    seq=st.none() | st.integers(0, 2**32),
    attempts=st.integers(0, 10_000),
    shard=st.integers(0, 63),
    due=st.booleans(),
)
_any_letter = st.builds(DeadLetter, record=_record, reason=_text, topic=st.none() | _text)
_max_bytes = st.one_of(st.integers(MIN_MESSAGE_BYTES, 8192), st.sampled_from([DEFAULT_MAX_MESSAGE_BYTES]))


def _units(text: str) -> bytes:
    """UTF-16 code units: json.loads joins an escaped surrogate pair that Python held as two."""
    return text.encode("utf-16-le", "surrogatepass")


def _check_body(body: str, letter: DeadLetter, max_bytes: int) -> dict[str, Any]:
    """SQS accepts the body, and it tells the row's fields as they are, or cut and said so."""
    refusal = sqs_refusal(body, max_bytes)
    assert refusal is None, refusal
    parsed: dict[str, Any] = json.loads(body)
    record = letter.record
    assert parsed["outbox_id"] == record.id
    truncated: dict[str, int] = parsed.get("truncated", {})
    if len(record.event_id) <= 36:  # the column is CHAR(36): such an id is always carried whole
        assert "event_id" not in truncated
    originals = {
        "event_id": record.event_id,
        "aggregate_type": record.aggregate_type,
        "aggregate_id": record.aggregate_id,
        "event_type": record.event_type,
        "topic": letter.topic,
        "reason": letter.reason,
        "headers": record.headers,
    }
    for key, original in originals.items():
        if key not in parsed:
            continue
        if key in truncated:
            assert original is not None and truncated[key] == len(original)
            assert parsed[key].endswith(TRUNCATED)
            assert _units(original).startswith(_units(parsed[key][: -len(TRUNCATED)]))
        elif original is None:
            assert parsed[key] is None
        else:
            assert _units(parsed[key]) == _units(original), key
    if "payload" in parsed:
        assert parsed["payload"].encode("utf-8") == record.payload
    elif "payload_base64" in parsed:
        assert base64.b64decode(parsed["payload_base64"]) == record.payload
    else:
        assert "DEAD row keeps" in parsed["payload_omitted"]
    return parsed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(letter=_any_letter, max_bytes=_max_bytes)
def test_every_dead_letter_body_is_one_sqs_accepts_and_names_the_row(
    letter: DeadLetter, max_bytes: int
) -> None:
    body = dead_letter_body(letter, max_bytes)  # never raises
    parsed = _check_body(body, letter, max_bytes)
    assert set(parsed) >= {"outbox_id", "event_id", "reason"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(letter=_any_letter)
def test_a_refused_letter_body_is_ascii_and_small(letter: DeadLetter) -> None:
    body = refused_body(letter, "InvalidMessageContents: something SQS did not like")
    assert sqs_accepts(body, MIN_MESSAGE_BYTES) and body.isascii(), "any queue takes it"
    parsed = json.loads(body)
    assert parsed["outbox_id"] == letter.record.id
    assert not {"payload", "payload_base64", "headers"} & set(parsed)
    if len(letter.record.event_id) <= 36:
        assert _units(parsed["event_id"]) == _units(letter.record.event_id)


def test_a_body_that_fits_keeps_everything_and_escapes_only_what_sqs_refuses() -> None:
    letter = _hostile_letter(1, payload="é\ufffe€\x00".encode(), headers='{"h":"\uffff\ud800"}')
    body = dead_letter_body(letter, DEFAULT_MAX_MESSAGE_BYTES)
    # Legal non-ASCII stays as it is (a third of the size of a \\u escape); the rest is escaped.
    assert '"payload":"é\\ufffe€\\u0000"' in body and '"headers":"{\\"h\\":\\"\\uffff\\ud800\\"}"' in body
    parsed = _check_body(body, letter, DEFAULT_MAX_MESSAGE_BYTES)
    assert parsed["payload"] == "é\ufffe€\x00" and "truncated" not in parsed


def test_a_payload_too_large_is_referenced_by_the_row_and_invalid_utf8_goes_as_base64() -> None:
    big = _hostile_letter(2, payload=b"x" * 2000)
    binary = _hostile_letter(3, payload=b"\xff\xfe\x00")
    parsed = _check_body(dead_letter_body(big, 1024), big, 1024)
    assert parsed["payload_bytes"] == 2000 and "payload" not in parsed
    assert parsed["event_id"] == "evt-2" and parsed["aggregate_id"] == "o-2"
    assert json.loads(dead_letter_body(binary, 1024))["payload_base64"] == "//4A"


def test_huge_fields_are_cut_the_longest_first_and_say_so() -> None:
    letter = _hostile_letter(4, headers="\ufffe" * 100_000, reason="r" * 50_000)
    body = dead_letter_body(letter, 4096)
    parsed = _check_body(body, letter, 4096)
    assert parsed["truncated"] == {"headers": 100_000, "reason": 50_000}
    assert parsed["aggregate_id"] == "o-4" and parsed["event_id"] == "evt-4"
    assert len(body.encode()) > 3500, "the room left is used, not wasted"


def test_a_lone_surrogate_no_longer_breaks_the_send() -> None:
    # Before: json.dumps(ensure_ascii=False) kept it raw, and sizing the body raised UnicodeEncodeError.
    client = DocumentedSqs(DEFAULT_MAX_MESSAGE_BYTES)
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq")  # type: ignore[arg-type]
    assert sink.send([_hostile_letter(5, headers="\udc80")]) == [None]
    assert sqs_accepts(client.queue[0], DEFAULT_MAX_MESSAGE_BYTES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(letters=st.lists(_any_letter, min_size=1, max_size=25), max_bytes=_max_bytes)
def test_sqs_acknowledges_every_letter_at_once(letters: list[DeadLetter], max_bytes: int) -> None:
    """Against the documented rules: no request refused as a whole, no entry refused."""
    client = DocumentedSqs(max_bytes)
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq", max_bytes)  # type: ignore[arg-type]
    assert sink.send(letters) == [None] * len(letters)
    assert len(client.queue) == len(letters)
    for call in client.calls:
        assert batch_refusal([e["MessageBody"] for e in call], max_bytes) is None


@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=40),
    wide=st.sampled_from("a\xe9\u20ac\U0001f600"),
)
def test_batches_count_utf8_bytes_as_sqs_does(sizes: list[int], wide: str) -> None:
    sink = SqsDeadLetterSink(FakeSqs(set()), "https://sqs.example/dlq", max_bytes=1024)  # type: ignore[arg-type]
    bodies = [wide * n for n in sizes]  # up to 1,600 bytes in 400 characters
    batches = sink._batches(bodies)
    assert sorted(i for b in batches for i in b) == list(range(len(bodies)))
    for batch in batches:
        if len(batch) > 1:  # a lone body over the limit is dead_letter_body's to prevent
            assert batch_refusal([bodies[i] for i in batch], 1024) is None


@pytest.mark.parametrize("max_bytes", [1023, 1_048_577])
def test_a_size_sqs_does_not_allow_is_a_configuration_error(max_bytes: int) -> None:
    with pytest.raises(ValueError, match="outside SQS's message sizes"):
        SqsDeadLetterSink(FakeSqs(set()), "https://sqs.example/dlq", max_bytes)  # type: ignore[arg-type]


# --- letters SQS refuses for their content -------------------------------------------------


class PickySqs(DocumentedSqs):
    """Refuses, with SenderFault, any body holding ``needle``: a rule the relay did not foresee."""

    def __init__(self, needle: str) -> None:
        super().__init__(DEFAULT_MAX_MESSAGE_BYTES)
        self.needle = needle

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        picky = [e for e in Entries if self.needle in e["MessageBody"]]
        rest = [e for e in Entries if e not in picky]
        out: dict[str, Any] = {"Successful": [], "Failed": []}
        if rest:
            out = super().send_message_batch(QueueUrl, rest)
            self.calls.pop()
        self.calls.append(Entries)
        out["Failed"] += [
            {"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "no"}
            for e in picky
        ]
        return out


def test_a_letter_refused_for_its_content_is_sent_again_with_ids_and_reason_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = PickySqs('"headers":')
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq")  # type: ignore[arg-type]
    letters = [_hostile_letter(n) for n in range(1, 13)]

    with caplog.at_level(logging.WARNING, logger="outbox_relay"):
        assert sink.send(letters) == [None] * 12, "acknowledged: no row waits on a letter SQS refuses"

    assert [len(c) for c in client.calls] == [10, 2, 10, 2], "two batches, then their letters once more"
    resent = [json.loads(body) for body in client.queue]
    assert sorted(m["outbox_id"] for m in resent) == list(range(1, 13))
    for message in resent:
        assert message["refused"] == "InvalidMessageContents: no"
        assert (
            message["event_id"] == f"evt-{message['outbox_id']}"
            and message["reason"] == "payload is not valid JSON"
        )
        assert not {"payload", "headers"} & set(message)
    warnings = [r for r in caplog.records if "sent again without payload" in r.getMessage()]
    assert sorted(r.__dict__["outbox_id"] for r in warnings) == list(range(1, 13))


def test_a_letter_refused_twice_stays_unsent_with_both_reasons() -> None:
    client = PickySqs('"outbox_id":2,')
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq")  # type: ignore[arg-type]
    results = sink.send([_hostile_letter(1), _hostile_letter(2)])
    assert results[0] is None
    assert results[1] == "InvalidMessageContents: no; the reduced letter too: InvalidMessageContents: no"
    assert len(client.calls) == 2, "resent once, not in a loop"


def test_a_request_refused_whole_for_its_content_is_the_letters_fault_not_an_outage() -> None:
    """e.g. a queue whose MaximumMessageSize is below the relay's setting (moto answers so)."""
    calls: list[list[dict[str, str]]] = []

    class TooSmallQueue(DocumentedSqs):
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            calls.append(Entries)
            if any(len(e["MessageBody"]) > 1500 for e in Entries):
                message = "Message must be shorter than 1024 bytes."
                raise ClientError(
                    {"Error": {"Code": "InvalidParameterValue", "Message": message}}, "SendMessageBatch"
                )
            return super().send_message_batch(QueueUrl, Entries)

    sink = SqsDeadLetterSink(TooSmallQueue(8192), "https://sqs.example/dlq", max_bytes=8192)  # type: ignore[arg-type]
    letters = [_hostile_letter(1, payload=b"x" * 3000), *(_hostile_letter(n) for n in range(2, 13))]
    assert sink.send(letters) == [None] * 12
    # The first batch was refused whole; the second was still tried; the first's letters went reduced.
    assert [len(c) for c in calls] == [10, 2, 10]
    assert all('"refused":"An error occurred (InvalidParameterValue)' in e["MessageBody"] for e in calls[2])


def test_refused_letters_are_not_resent_once_the_queue_failed_as_a_whole() -> None:
    class RefuseThenStall(PickySqs):
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            if self.calls:
                raise ReadTimeoutError(endpoint_url="https://sqs.example")
            return super().send_message_batch(QueueUrl, Entries)

    client = RefuseThenStall('"outbox_id":1,')
    sink = SqsDeadLetterSink(client, "https://sqs.example/dlq")  # type: ignore[arg-type]
    with pytest.raises(DeadLetterQueueDown) as down:
        sink.send([_hostile_letter(n) for n in range(1, 13)])
    results = down.value.results
    timeout = 'Read timeout on endpoint URL: "https://sqs.example"'
    assert results[0] == "InvalidMessageContents: no (not resent: the queue failed)"
    assert results[1:10] == [None] * 9 and results[10:] == [timeout] * 2
    assert len(client.calls) == 1


def _hostile_letter(
    n: int, payload: bytes = b"{}", headers: str | None = None, reason: str = ""
) -> DeadLetter:
    record = OutboxRecord(
        n, f"evt-{n}", "order", f"o-{n}", "OrderCreated", payload, None, headers, None, 3, 0, True
    )
    return DeadLetter(record, reason or "payload is not valid JSON", "outbox.event.order")


@pytest.mark.parametrize("max_bytes", [40, 200, 600])
def test_below_sqs_minimum_the_body_still_names_the_row(max_bytes: int) -> None:
    letter = _hostile_letter(7, payload=b"x" * 5000, headers="h" * 5000)
    body = dead_letter_body(letter, max_bytes)
    assert sqs_accepts(body, max_bytes) and json.loads(body)["outbox_id"] == 7


def test_a_malformed_record_still_gets_its_ids_out(caplog: pytest.LogCaptureFixture) -> None:
    letter = _hostile_letter(8, headers=b"not a str")  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="outbox_relay"):
        body = dead_letter_body(letter, 1024)
    assert json.loads(body) == {"outbox_id": 8, "event_id": "evt-8"}
    assert "dead-letter body failed" in caplog.text


def test_a_queue_that_fails_during_the_resend_is_down_with_the_answers_so_far() -> None:
    class RefuseThenStall(PickySqs):
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            if self.calls:
                raise ReadTimeoutError(endpoint_url="https://sqs.example")
            return super().send_message_batch(QueueUrl, Entries)

    sink = SqsDeadLetterSink(RefuseThenStall('"outbox_id":1,'), "https://sqs.example/dlq")  # type: ignore[arg-type]
    with pytest.raises(DeadLetterQueueDown) as down:
        sink.send([_hostile_letter(1), _hostile_letter(2)])
    assert down.value.results[1] is None, "acknowledged before the failure: its row may become DEAD"
    assert str(down.value) in str(down.value.results[0])


def test_a_row_of_megabytes_is_described_quickly() -> None:
    """The relay waits for dead letters within the run's deadline: sizing one must not eat it."""
    record = OutboxRecord(
        1, "evt-1", "order", "\ufffe" * 3_000_000, "T", b"\xff" * 10_000_000, None, "\ud800" * 5_000_000,
        None, 3, 0, True,
    )  # fmt: skip
    started = time.perf_counter()
    body = dead_letter_body(DeadLetter(record, "why\x07" * 1_000_000, "t"), 1_048_576)
    assert time.perf_counter() - started < 2.0  # about 0.2 s; 6 s before runs were escaped at once
    assert sqs_accepts(body, 1_048_576)
