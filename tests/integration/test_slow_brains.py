"""Rooms never wait for each other: a slow brain (a model call in flight) holds one
turn, not the agent. With more rooms than an agent's permanent turn workers, every room's
turn is in the brain at once, over the real bus and log."""

from __future__ import annotations

import anyio
import asyncpg

from mams.actors.agent import TURN_WORKERS
from mams.actors.brains.base import SellerDecision
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RunOptions
from mams.bus.subjects import Subjects
from mams.domain.config import parse_scenario_text
from mams.domain.guardrails import Violation
from mams.domain.views import SellerView
from mams.storage.eventstore import PostgresEventStore
from tests.integration.helpers import run_cast

ROOMS = TURN_WORKERS + 8


def _scenario_text(rooms: int) -> str:
    items = "".join(
        f'[[buyer.items]]\nitem_name = "item-{i}"\nquantity = 1\n'
        "min_price = 8.00\nmax_price = 14.00\n\n"
        for i in range(rooms)
    )
    stock = "".join(
        f'[[sellers.inventory]]\nitem_name = "item-{i}"\ncost_price = 6.00\n'
        "selling_price = 15.00\nleast_price = 9.00\n\n"
        for i in range(rooms)
    )
    return (
        f'name = "slow brains"\n\n[buyer]\nhandle = "@Buyer"\n\n{items}'
        '[[sellers]]\nhandle = "@Slow"\nstyle = "neutral"\n'
        "customer_retention_weight = 0.5\nprofit_maximization_weight = 0.5\n\n"
        f"{stock}"
    )


class Gathering:
    """A seller brain whose first turn in each room waits until every room's first turn
    is in it at once (then all go on): a pool capped below ROOMS would never get there."""

    label = "gathering"

    def __init__(self, rooms: int) -> None:
        self.rooms = rooms  # how many must be in decide at once
        self.inside = 0
        self.most = 0
        self.everyone = anyio.Event()
        self.inner = BaselineSeller()

    async def decide(self, view: SellerView) -> SellerDecision:
        if view.round == 1 and not self.everyone.is_set():
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside == self.rooms:
                self.everyone.set()
            try:
                with anyio.move_on_after(5):  # never here: the test fails on `most`
                    await self.everyone.wait()
            finally:
                self.inside -= 1
        return await self.inner.decide(view)

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        return await self.inner.repair(view, rejected, problems)


async def test_every_room_thinks_at_once(
    nats_url: str, pg_store: tuple[asyncpg.Pool, PostgresEventStore], subjects: Subjects
) -> None:
    _, store = pg_store
    scenario = parse_scenario_text(_scenario_text(ROOMS), fmt="toml")
    brain = Gathering(ROOMS)
    with anyio.fail_after(60):
        rooms = await run_cast(
            scenario,
            scenario.buyer.items,
            nats_url=nats_url,
            store=store,
            subjects=subjects,
            options=RunOptions(max_rounds=3, seed=1, round_timeout=30),
            buyer_brain=BaselineBuyer(),
            seller_brains={scenario.sellers[0].agent_id: brain},
        )
    assert brain.most == ROOMS
    assert len(rooms) == ROOMS
    assert all(r.state.phase == "ended" for r in rooms)
