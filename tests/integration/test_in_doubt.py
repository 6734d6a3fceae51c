"""However a run ends, records it handed to Kafka that may still land keep its shards fenced for the
grace period (``lease_margin_seconds``): also when ``Publisher.send`` itself raises."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from outbox_relay.model import Delivery, Message
from outbox_relay.ports import Settled
from tests import support
from tests.integration.test_relay_rules import ScriptedPublisher, make_relay, run


class HandsOverThenRaises:
    """Hands some records to the producer (in doubt), then hits a bug."""

    def __init__(self) -> None:
        self.in_doubt = False

    def send(self, messages: Sequence[Message], deadline: float) -> Settled:
        self.in_doubt = True
        raise RuntimeError("a bug after records were handed over")

    def new_run(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_send_that_raises_in_doubt_fences_the_shards_for_the_grace_period(
    database: support.Database, relay_env: dict[str, str]
) -> None:
    database.insert(support.backlog(20, 5))
    with pytest.raises(RuntimeError):
        run(make_relay(relay_env, HandsOverThenRaises()))

    other = make_relay(relay_env, ScriptedPublisher(lambda m: Delivery.DELIVERED))
    assert run(other).published == 0, "another run took the shards while records may still land"
    time.sleep(float(relay_env["OUTBOX_LEASE_MARGIN_SECONDS"]) + 0.3)
    assert run(other).published == 20
