"""Commit lanes: rooms commit side by side, yet a deliveries-only message (welcome,
catch-up, rooms.opened) keeps its place in the order of everything decided."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from uuid import UUID

import anyio
import msgspec

from mams.actors.broker import Broker
from mams.bus.base import Subscription
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.messages import (
    BuyerTurn,
    Hello,
    InboxMessage,
    Say,
    Welcome,
    decode_inbox,
    encode,
)
from mams.storage.model import NewEvent
from tests.domain.helpers import BUYER, started
from tests.storage.helpers import WrappedStore


class GatedStore(WrappedStore):
    """An in-memory store whose commits touching one room wait at a gate."""

    def __init__(self, held: UUID) -> None:
        super().__init__()
        self.held = held
        self.gate = anyio.Event()

    async def append(self, events: Sequence[NewEvent]) -> None:
        if any(e.stream_id == self.held for e in events):
            await self.gate.wait()
        await super().append(events)


def room_on_lane(lane: int) -> UUID:
    """A negotiation id the broker's two lanes route to `lane`."""
    while True:
        nid = uuid.uuid4()
        if nid.int % 2 == lane:
            return nid


async def received(sub: Subscription, seconds: float) -> list[InboxMessage]:
    """What arrives on `sub` within `seconds`."""
    got: list[InboxMessage] = []
    with anyio.move_on_after(seconds):
        async for msg in sub:
            got.append(decode_inbox(msg.data))
    return got


async def test_a_welcome_waits_for_every_lane_and_nothing_decided_after_it_overtakes_it() -> None:
    held, free = room_on_lane(0), room_on_lane(1)
    store = GatedStore(held)
    bus = InMemoryBus()
    subjects = Subjects(prefix="lanes")
    broker = Broker(bus, store, subjects, commit_lanes=2)
    buyer_inbox = await bus.subscribe(subjects.inbox(AgentId(BUYER)))
    seller_inbox = await bus.subscribe(subjects.inbox(AgentId("alpha")))
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        for nid in (held, free):
            await broker.open(msgspec.structs.replace(started(), negotiation_id=nid))
        # The free room's lane commits and delivers; the held room's lane waits at the gate.
        first = await received(buyer_inbox, 0.3)
        assert first
        assert {m.negotiation_id for m in first if hasattr(m, "negotiation_id")} == {free}
        assert {getattr(m, "negotiation_id", None) for m in await received(seller_inbox, 0.1)} == {
            free
        }
        # The buyer says hello (a welcome and catch-up follow), then takes its turn in the
        # free room: decided after the welcome, so delivered after it.
        outbox = subjects.outbox(AgentId(BUYER))
        await bus.publish(outbox, encode(Hello(role="buyer")))
        turn = BuyerTurn(
            negotiation_id=free, round=1, message_id=uuid.uuid4(), action=Say(text="Hi all")
        )
        await bus.publish(outbox, encode(turn))
        assert await received(buyer_inbox, 0.3) == []
        assert await received(seller_inbox, 0.3) == []

        store.gate.set()
        later = await received(buyer_inbox, 0.5)
        kinds = [(type(m).__name__, getattr(m, "negotiation_id", None)) for m in later]
        welcome = next(i for i, m in enumerate(later) if isinstance(m, Welcome))
        held_first = next(i for i, k in enumerate(kinds) if k[1] == held)
        assert held_first < welcome, kinds  # the held room's opening came first
        to_seller = await received(seller_inbox, 0.3)
        assert any(getattr(m, "message_id", None) == turn.message_id for m in to_seller)
        tg.cancel_scope.cancel()
    for sub in (buyer_inbox, seller_inbox):
        await sub.unsubscribe()
