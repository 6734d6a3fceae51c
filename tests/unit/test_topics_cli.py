"""`outbox-relay topics`: options checked before Kafka is called, the relay's own security
settings, and a replication factor that fits the cluster (Kafka replaced by a recording fake;
tests/integration/test_topics_tool.py runs the same commands on the real broker)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from outbox_relay import cli, cli_schema, kafka_tools
from outbox_relay.cli_common import DONE, REFUSED, USAGE
from outbox_relay.kafka_auth import MskIamTokenProvider
from outbox_relay.messages import legal_topic

FIXTURES = [HealthCheck.function_scoped_fixture]


class FakeAdmin:
    """KafkaAdminClient as far as ensure_topics uses it; records what it was given."""

    made: ClassVar[list[dict[str, Any]]] = []
    brokers: ClassVar[list[dict[str, Any]]] = []
    existing: ClassVar[set[str]] = set()
    created: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **config: Any) -> None:
        FakeAdmin.made.append(config)

    def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": FakeAdmin.brokers}

    def list_topics(self) -> list[str]:
        return sorted(FakeAdmin.existing)

    def create_topics(self, spec: dict[str, dict[str, Any]], wait_for_metadata: bool) -> None:
        FakeAdmin.created.update(spec)

    def close(self) -> None:
        pass


class FakeConsumer:
    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **config: Any) -> None:
        FakeConsumer.made.append(config)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0} if topic in FakeAdmin.existing else set()

    def assign(self, partitions: list[Any]) -> None:
        pass

    def seek_to_beginning(self, *partitions: Any) -> None:
        pass

    def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)  # empty topics

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_tools, "KafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(kafka_tools, "KafkaConsumer", FakeConsumer)
    FakeAdmin.made, FakeAdmin.existing, FakeAdmin.created = [], set(), {}
    FakeAdmin.brokers = [{"broker_id": 1, "is_fenced": False}]
    FakeConsumer.made = []
    for key in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_SECRET_ARN",
        "KAFKA_SSL_CAFILE",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b-1.example:9098,b-2.example:9098")


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(name=st.text(max_size=300))
def test_a_topic_name_is_judged_by_the_relays_rule_before_kafka_is_called(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python 3.11's argparse drops every "--" from the positionals, not only the first (fixed in
    # 3.12): a topic named "--" cannot be given on 3.11's command line at all.
    assume(name != "--")
    FakeAdmin.made, FakeAdmin.created = [], {}
    code = cli.main(["topics", "ensure", "--", name])
    if legal_topic(name):
        assert code == DONE and list(FakeAdmin.created) == [name]
        capsys.readouterr()
    else:
        assert code == REFUSED and FakeAdmin.made == [], "Kafka was not called"
        assert one_line(capsys).startswith("outbox-relay topics: not a legal topic name: ")


@pytest.mark.parametrize("name", ["", ".", "..", "__consumer_offsets", "a" * 250, "order v2", "é", "a/b"])
def test_illegal_names_are_refused_for_read_too(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topics", "read", "--", name]) == REFUSED
    assert "not a legal topic name" in one_line(capsys) and FakeConsumer.made == []


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(value=st.one_of(st.integers(-(10**12), 10**12).map(str), st.text(max_size=20)))
def test_partitions_are_a_whole_number_from_1_to_1000(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    FakeAdmin.created = {}
    # Plain decimals only (cli_common.integer): no 1_0, 0x10, ¹, 1e3.
    expected = int(value) if re.fullmatch(r"[+-]?[0-9]+", value.strip()) else None
    code = cli.main(["topics", "ensure", "t", f"--partitions={value}"])
    if code == USAGE:
        assert expected is None or not 1 <= expected <= 1000, value
        assert FakeAdmin.created == {}
    else:
        assert code == DONE and expected is not None and 1 <= expected <= 1000, value
        assert FakeAdmin.created["t"]["num_partitions"] == expected
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["ensure", "t", "--replication-factor", "0"], "--replication-factor"),
        (["ensure", "t", "--replication-factor", "1.5"], "--replication-factor"),
        (["ensure", "t", "--timeout", "0"], "--timeout"),
        (["ensure", "t", "--timeout", "nan"], "--timeout"),
        (["read", "t", "--limit", "-1"], "--limit"),
        (["read", "t", "--limit", "1_0"], "--limit"),
    ],
)
def test_other_options_are_checked(argv: list[str], bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topics", *argv]) == USAGE
    assert f"argument {bad}" in capsys.readouterr().err
    assert FakeAdmin.made == [] and FakeConsumer.made == []


@pytest.mark.parametrize(
    ("brokers", "fenced", "factor"), [(1, 0, 1), (2, 0, 2), (3, 0, 3), (6, 0, 3), (3, 2, 1)]
)
def test_the_default_replication_factor_fits_the_cluster(brokers: int, fenced: int, factor: int) -> None:
    FakeAdmin.brokers = [{"broker_id": n, "is_fenced": n < fenced} for n in range(brokers)]
    assert cli.main(["topics", "ensure", "t"]) == DONE
    assert FakeAdmin.created["t"]["replication_factor"] == factor


def test_a_replication_factor_above_the_brokers_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    FakeAdmin.brokers = [{"broker_id": n, "is_fenced": False} for n in range(3)]
    assert cli.main(["topics", "ensure", "t", "--replication-factor", "4"]) == REFUSED
    assert one_line(capsys) == (
        "outbox-relay topics: replication factor 4 needs 4 brokers; the cluster has 3 (nothing was created)"
    )
    assert FakeAdmin.created == {}
    assert cli.main(["topics", "ensure", "t", "--replication-factor", "2"]) == DONE
    assert FakeAdmin.created["t"]["replication_factor"] == 2


def test_msk_iam_and_tls_settings_are_the_relays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    for key, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "AWS_REGION": "eu-west-1",
        "KAFKA_SSL_CAFILE": str(ca),
    }.items():
        monkeypatch.setenv(key, value)
    FakeAdmin.existing = {"t"}

    assert cli.main(["topics", "ensure", "t", "--timeout", "7"]) == DONE
    assert cli.main(["topics", "read", "t"]) == DONE

    for config in (FakeAdmin.made[0], FakeConsumer.made[0]):
        assert config["bootstrap_servers"] == ["b-1.example:9098", "b-2.example:9098"]
        assert (config["security_protocol"], config["sasl_mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
        assert isinstance(config["sasl_oauth_token_provider"], MskIamTokenProvider)
        assert config["sasl_oauth_token_provider"].region == "eu-west-1"
        assert config["ssl_cafile"] == str(ca)
    assert FakeAdmin.made[0]["bootstrap_timeout_ms"] == 7000


def test_scram_credentials_come_from_the_relays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:AmazonMSK_x",
    }.items():
        monkeypatch.setenv(key, value)
    asked: list[str] = []

    def secret(arn: str) -> str:
        asked.append(arn)
        return json.dumps({"username": "relay", "password": "s3cret"})

    monkeypatch.setattr(cli_schema, "_read_secret", secret)

    assert cli.main(["topics", "ensure", "t", "--bootstrap", "127.0.0.1:9096"]) == DONE

    config = FakeAdmin.made[0]
    assert config["bootstrap_servers"] == ["127.0.0.1:9096"], "--bootstrap wins over the variable"
    assert (config["sasl_mechanism"], config["sasl_plain_username"], config["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "relay",
        "s3cret",
    )
    assert asked == ["arn:aws:secretsmanager:eu-west-1:1:secret:AmazonMSK_x"]


def test_a_missing_topic_is_not_an_empty_one(capsys: pytest.CaptureFixture[str]) -> None:
    FakeAdmin.existing = {"there"}
    assert cli.main(["topics", "read", "there", "gone"]) == 4
    assert one_line(capsys) == "outbox-relay topics: no such topic: gone; nothing was read"
