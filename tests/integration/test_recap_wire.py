"""Which hellos the broker answers with a room's recap, over real NATS and PostgreSQL.

A full hello (a process that starts: it may have lost its conversation) gets each open
room's view, then the recap of the lines it said or was told, read from the log, then the
rest of its catch-up. A full hello with `recap: false` (a reconnect: the agent kept its
conversation) and a keepalive get no recap. The agent publishes raw, as any agent may.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import anyio
import pytest

from mams.bus.base import Subscription
from mams.bus.subjects import AgentId, Subjects
from mams.domain.events import RoundOpened
from mams.domain.messages import (
    BuyerMessage,
    BuyerRoomOpened,
    Hello,
    InboxMessage,
    Recap,
    SellerMessage,
    TurnStarted,
    Welcome,
    decode_inbox,
)
from mams.storage.errors import DatabaseUnavailable
from mams.storage.model import StoredEvent
from tests.integration.helpers import BrokerRig, broker_rig, started_for
from tests.integration.scenarios import phone
from tests.integration.test_broker_robustness import BUYER, CALM, ITEM, Store, reply, say
from tests.storage.helpers import WrappedStore

pytestmark = pytest.mark.integration


async def test_only_a_full_hello_gets_the_recap(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    sellers = [s.agent_id for s in started.sellers]
    with anyio.fail_after(30):
        async with broker_rig(nats_url, store, subjects) as rig:
            inbox = await rig.raw.subscribe(subjects.inbox(AgentId(BUYER)))
            await rig.open(started)
            await rig.wait_for(RoundOpened, lambda e: e.round == 1)
            first = say(nid, 1, text="What is your best price for two?")
            await rig.send(BUYER, first)
            answers = [reply(nid, 1, f"1{i}.00", text=f"from {s}") for i, s in enumerate(sellers)]
            for seller, answer in zip(sellers, answers, strict=True):
                await rig.send(seller, answer)
            await rig.wait_for(RoundOpened, lambda e: e.round == 2)

            full = await _hello_answer(rig, inbox, Hello(role="buyer"))
            kinds = [type(m).__name__ for m in full]
            assert kinds == [
                "Welcome",
                "BuyerRoomOpened",
                "Recap",
                *["SellerMessage"] * len(sellers),
                "TurnStarted",
            ]
            recap = full[2]
            assert isinstance(recap, Recap)
            assert recap.mine
            assert isinstance(recap.message, BuyerMessage)
            assert recap.message.message_id == first.message_id
            assert recap.to == tuple(sellers)  # whom it reached
            heard = [m for m in full if isinstance(m, SellerMessage)]
            assert {m.message_id for m in heard} == {a.message_id for a in answers}

            reconnect = await _hello_answer(rig, inbox, Hello(role="buyer", recap=False))
            assert not any(isinstance(m, Recap) for m in reconnect)
            assert any(isinstance(m, BuyerRoomOpened) for m in reconnect)
            # A keepalive re-sends a turn only once it has been owed for a while: the
            # first (turn just begun) gets the welcome alone, the second (owed long
            # enough) the welcome, the answers and the turn, and never a recap.
            await _drain(inbox)
            await rig.send(BUYER, Hello(role="buyer", catch_up=False))
            welcome = decode_inbox((await inbox.__anext__()).data)
            assert isinstance(welcome, Welcome)
            with anyio.move_on_after(0.5):  # the rest of its answer would follow at once
                extra = decode_inbox((await inbox.__anext__()).data)
                raise AssertionError(f"a turn just begun was re-sent on a keepalive: {extra}")
            rig.broker.resend_after = 0.0
            keepalive = await _hello_answer(rig, inbox, Hello(role="buyer", catch_up=False))
            kinds = [type(m).__name__ for m in keepalive]
            assert kinds == ["Welcome", *["SellerMessage"] * len(sellers), "TurnStarted"]


async def _hello_answer(rig: BrokerRig, inbox: Subscription, hello: Hello) -> list[InboxMessage]:
    """What the broker sends the buyer for `hello`, up to the turn it owes."""
    await _drain(inbox)
    await rig.send(BUYER, hello)
    got: list[InboxMessage] = []
    async for msg in inbox:
        got.append(decode_inbox(msg.data))
        if isinstance(got[-1], TurnStarted) and any(isinstance(m, Welcome) for m in got):
            return got
    raise AssertionError("the inbox ended")


class UnreadableStore(WrappedStore):
    """Appends work; the bulk read a recap needs fails (the database went away)."""

    async def read_streams(
        self, stream_ids: Sequence[UUID], *, types: Sequence[str] | None = None
    ) -> dict[UUID, list[StoredEvent]]:
        raise DatabaseUnavailable(None, "gone for the test")


async def test_a_recap_the_log_cannot_give_is_left_out_and_the_rest_still_sent(
    nats_url: str, subjects: Subjects
) -> None:
    store = UnreadableStore()
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    with anyio.fail_after(30):
        async with broker_rig(nats_url, store, subjects) as rig:
            inbox = await rig.raw.subscribe(subjects.inbox(AgentId(BUYER)))
            await rig.open(started)
            await rig.wait_for(RoundOpened, lambda e: e.round == 1)
            await rig.send(BUYER, say(nid, 1))
            for seller in [s.agent_id for s in started.sellers]:
                await rig.send(seller, reply(nid, 1))
            await rig.wait_for(RoundOpened, lambda e: e.round == 2)
            full = await _hello_answer(rig, inbox, Hello(role="buyer"))
    kinds = [type(m).__name__ for m in full]
    assert kinds[:2] == ["Welcome", "BuyerRoomOpened"]
    assert "Recap" not in kinds
    assert kinds[-1] == "TurnStarted"


async def _drain(sub: Subscription) -> None:
    """Discard what is already buffered in `sub` (nothing more arrives within 0.2 s)."""
    while True:
        with anyio.move_on_after(0.2) as scope:
            await sub.__anext__()
        if scope.cancelled_caught:
            return
