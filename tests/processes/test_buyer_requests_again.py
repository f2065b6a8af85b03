"""An open_rooms in flight when a broker dies is not lost: `mams buyer` (a real process,
on real NATS) sends its unanswered requests again, same request_id, on the next welcome.

The broker here is the test itself on a raw nats-py connection, so that it can do what a
broker that died between receiving a request and committing it does: never answer it.
Before the hardening issue the buyer waited forever (the red team saw 7 rooms never open).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import nats
import pytest

from mams.bus.subjects import AgentId, Subjects
from mams.domain.messages import (
    Hello,
    OpenRooms,
    Rejected,
    Welcome,
    decode_outbox,
    encode,
)
from tests.processes.helpers import Cast
from tests.processes.test_processes import SCENARIO

pytestmark = pytest.mark.e2e


async def test_a_request_a_dead_broker_never_answered_is_sent_again(
    procs: Cast, market: str, nats_url: str, tmp_path: Path
) -> None:
    scenario_file = tmp_path / "scenario.toml"
    scenario_file.write_text(SCENARIO, encoding="utf-8")
    subjects = Subjects(prefix=market)
    inbox = subjects.inbox(AgentId("buyer"))
    nc = await nats.connect(nats_url, name="test-broker")
    try:
        outbox = await nc.subscribe(subjects.all_outboxes())
        await nc.flush()
        buyer = procs.buyer(scenario_file, market, "--model", "baseline")
        requests: list[OpenRooms] = []
        with anyio.fail_after(60):
            async for msg in outbox.messages:
                turn = decode_outbox(msg.data)
                if isinstance(turn, Hello):
                    # Every hello is welcomed, as a broker (or its restarted successor) does.
                    await nc.publish(inbox, encode(Welcome(agent_id="buyer")))
                elif isinstance(turn, OpenRooms):
                    requests.append(turn)
                    if len(requests) == 1:
                        continue  # the broker died with it: no answer, nothing opened
                    refusal = Rejected(request_id=turn.request_id, reason="test over")
                    await nc.publish(inbox, encode(refusal))
                    break
        assert await buyer.wait() == 2, buyer.describe()
    finally:
        await nc.close()
    first, again = requests
    assert again == first  # the same request, same request_id: the broker opens it once
    assert "test over" in buyer.err()
