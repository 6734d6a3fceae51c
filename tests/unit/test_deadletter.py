"""The SQS dead-letter sink without AWS: laziness and per-message acknowledgements."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ReadTimeoutError

from outbox_relay.deadletter_sqs import SqsDeadLetterSink
from outbox_relay.model import DeadLetter, OutboxRecord


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
    results = sink.send([_letter(n) for n in range(25)])  # three batches of up to 10
    assert client.calls == 1, "each try would wait out the same timeout"
    assert results == ['Read timeout on endpoint URL: "https://sqs.example"'] * 25
