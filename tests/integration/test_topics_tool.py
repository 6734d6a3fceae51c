"""`outbox-relay topics` on the real Kafka broker (one broker: the default replication factor is
1 there, and 2 is refused before anything is created)."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient

from outbox_relay import cli
from outbox_relay.cli_common import DONE, FAILED, NOTHING_TO_DO, REFUSED
from tests import support
from tests.conftest import make_topics


@pytest.fixture(autouse=True)
def kafka_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", support.KAFKA)
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL", raising=False)


def described(*names: str) -> dict[str, tuple[int, int]]:
    """Each existing topic's partitions and replication factor."""
    admin = KafkaAdminClient(bootstrap_servers=support.KAFKA)
    try:
        return {
            t["name"]: (len(t["partitions"]), len(t["partitions"][0]["replica_nodes"]))
            for t in admin.describe_topics(list(names))
            if t["partitions"]
        }
    finally:
        admin.close()


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ensure_creates_with_a_replication_factor_the_cluster_has(
    topics: support.Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = topics.name("a"), topics.name("b")
    topics.created.update({a, b})

    assert cli.main(["topics", "ensure", a, "--partitions", "4"]) == DONE
    assert cli.main(["topics", "ensure", a, b]) == DONE

    out = capsys.readouterr().out
    assert f"created 1 topic(s): {a}" in out and f"created 1 topic(s): {b}" in out
    assert f"already there (left as they are): {a}" in out
    assert described(a, b) == {a: (4, 1), b: (3, 1)}


def test_a_replication_factor_above_the_brokers_is_refused_before_anything_is_created(
    topics: support.Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    name = topics.name("rf")

    assert cli.main(["topics", "ensure", name, "--replication-factor", "2"]) == REFUSED

    assert one_line(capsys) == (
        "outbox-relay topics: replication factor 2 needs 2 brokers; the cluster has 1 (nothing was created)"
    )
    assert described(name) == {}


def test_reading_a_missing_topic_says_so(topics: support.Topics, capsys: pytest.CaptureFixture[str]) -> None:
    make_topics(topics, "here")

    assert cli.main(["topics", "read", topics.name("here"), topics.name("nowhere")]) == NOTHING_TO_DO

    assert (
        one_line(capsys) == f"outbox-relay topics: no such topic: {topics.name('nowhere')}; nothing was read"
    )
    assert described(topics.name("nowhere")) == {}, "reading did not create it"
    assert cli.main(["topics", "read", topics.name("here")]) == DONE
    assert f"0 record(s) in {topics.name('here')}" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["ensure", "read"])
def test_an_unreachable_cluster_fails_in_one_line_within_the_timeout(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()

    assert cli.main(["topics", action, "t", "--bootstrap", "127.0.0.1:1", "--timeout", "1.5"]) == FAILED

    assert time.monotonic() - started < 5
    assert one_line(capsys).startswith(
        "outbox-relay topics: no answer from Kafka at 127.0.0.1:1 within 1.5 s"
    )
