"""An agent process that restarts mid-negotiation gets its conversation back (real NATS
and PostgreSQL, in-process actors).

The buyer says its round-1 message, every seller answers, and the buyer dies while
deciding round 2 (its actor cancelled, its connection closed: what a killed process
leaves). A new buyer with the same id says hello; the broker answers with the room's
view, the recap of the lines the buyer said or was told (read from the log), and the
turn it owes. The new buyer decides round 2 from the same conversation, offers and
counters as the buyer that died, and the room goes on.
"""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BuyerDecision
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.bus.subjects import Subjects
from mams.domain.events import BuyerSaid
from mams.domain.views import BuyerView
from mams.storage.eventstore import PostgresEventStore
from tests.faults.rig import Rig, phone_room
from tests.faults.test_broker_crash import poll
from tests.integration.helpers import logged, of_type

pytestmark = pytest.mark.integration


class Stalling(BaselineBuyer):
    """The baseline buyer, keeping the view it decided each round on; from round
    `stall_at` it never answers (the process dies while its model thinks)."""

    def __init__(self, stall_at: int | None = None) -> None:
        self.views: dict[int, BuyerView] = {}
        self.stall_at = stall_at

    async def decide(self, view: BuyerView) -> BuyerDecision:
        self.views[view.round] = view
        if self.stall_at is not None and view.round >= self.stall_at:
            await anyio.sleep_forever()
        return await super().decide(view)


async def _serve(actor: AgentActor, scope: anyio.CancelScope, *, task_status: object) -> None:
    with scope:
        await actor.run(task_status=task_status)  # type: ignore[arg-type]


async def test_a_restarted_buyer_decides_from_the_conversation_it_had(
    nats_url: str, pg_store: tuple[asyncpg.Pool, PostgresEventStore], subjects: Subjects
) -> None:
    _, store = pg_store
    started, sellers = phone_room(seed=5)
    nid = started.negotiation_id
    rig = Rig(nats_url, store, subjects)
    first, second = Stalling(stall_at=2), Stalling()
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                broker, _ = await rig.broker(tg, "broker", crashes=False)
                for agent_id in sellers:
                    seller = AgentActor(
                        await rig.bus(agent_id), subjects, agent_id, BaselineSeller(), "seller"
                    )
                    await tg.start(seller.run)
                dying_bus = await rig.bus("buyer-1")
                dying = AgentActor(dying_bus, subjects, "buyer", first, "buyer")
                killed = anyio.CancelScope()
                await tg.start(_serve, dying, killed)
                await broker.joined({"buyer", *sellers})
                await broker.open(started)
                await poll(lambda: 2 in first.views)
                killed.cancel()  # dies while deciding round 2
                await dying_bus.close()
                assert 2 not in second.views

                reborn = AgentActor(await rig.bus("buyer-2"), subjects, "buyer", second, "buyer")
                await tg.start(reborn.run)
                await poll(lambda: 2 in second.views)
                await poll(lambda: nid not in reborn.buyer_views)  # the room went on, ended
                tg.cancel_scope.cancel()
    finally:
        await rig.close()

    was, now = first.views[2], second.views[2]
    assert now.history == was.history
    assert dict(now.offers) == dict(was.offers)
    assert dict(now.my_counters) == dict(was.my_counters)
    assert (now.round, now.final, now.unanswered) == (was.round, was.final, was.unanswered)
    assert [line.speaker for line in now.history].count("me") == 1  # its round-1 words
    said = of_type(await logged(store, nid), BuyerSaid)
    assert [s.round for s in said][:2] == [1, 2]  # round 2 was said once, by the new buyer
