"""Constraints hold whatever a brain says (invariant 5), over the real bus and log.

The whole cast runs as actors on their own NATS connections, with one rogue brain among
baseline ones. The agent's own guardrail catches the bad action, asks the brain once to
repair it, else falls back to a safe action; the log records which, and nothing unsafe is
ever committed. The broker, the last line of defence, never has to override.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import anyio
import asyncpg
import pytest

from mams.actors.brains.base import BuyerDecision, SellerBrain, SellerDecision
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RoomResult, RunOptions
from mams.bus.subjects import Subjects
from mams.domain.events import (
    BuyerSaid,
    DealClosed,
    Event,
    GuardrailTripped,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    RoundClosed,
    SellerReplied,
)
from mams.domain.guardrails import HOLD_TEXT, Violation
from mams.domain.messages import Accept
from mams.domain.negotiation import replay
from mams.domain.views import BuyerView, SellerView
from mams.storage.eventstore import PostgresEventStore
from tests.integration.helpers import logged, of_type, run_cast
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

Store = tuple[asyncpg.Pool, PostgresEventStore]
ROGUE = "techmart"  # sells both items; least 11.00 (case) and 5.50 (cable)
BUYER = "buyer"

Mode = Literal["repairs", "stubborn", "raises"]


class FloorBreaker:
    """Always offers a dollar under its floor. On repair: fixes it, insists, or raises."""

    label = "rogue seller"

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.repairs = 0

    async def decide(self, view: SellerView) -> SellerDecision:
        if self.mode == "raises":
            raise RuntimeError("the model returned garbage")
        price = view.terms.least_price - Decimal("1.00")
        return SellerDecision(
            text=f"Only {price} for you!", offer=Offer(unit_price=price, quantity=view.quantity)
        )

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        self.repairs += 1
        assert [p.rule for p in problems] == ["offer_below_floor"]
        if self.mode == "repairs":
            floor = view.terms.least_price
            return SellerDecision(
                text=f"Sorry, {floor} is my floor.",
                offer=Offer(unit_price=floor, quantity=view.quantity),
            )
        return rejected


class Silent:
    """A seller brain that never answers (a hung model call)."""

    label = "silent seller"

    async def decide(self, view: SellerView) -> SellerDecision:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        raise AssertionError("never asked")


class PhantomBuyer:
    """Accepts offers nobody made: first from a seller with no offer, then below the
    standing offer. Insists when asked to repair; or raises, in mode "raises"."""

    label = "rogue buyer"

    def __init__(self, raises: bool = False) -> None:
        self.raises = raises

    async def decide(self, view: BuyerView) -> BuyerDecision:
        if self.raises:
            raise ValueError("tool call did not parse")
        if not view.offers:
            target, price = view.sellers[0].agent_id, view.min_price
        else:
            target, offer = min(view.offers.items(), key=lambda kv: kv[1].unit_price)
            price = offer.unit_price - Decimal("0.50")
        return BuyerDecision(
            action=Accept(seller=target, unit_price=price, quantity=view.quantity, text="Done!")
        )

    async def repair(
        self, view: BuyerView, rejected: BuyerDecision, problems: list[Violation]
    ) -> BuyerDecision:
        return rejected


async def _run(
    nats_url: str,
    store: PostgresEventStore,
    subjects: Subjects,
    *,
    options: RunOptions,
    sellers: dict[str, SellerBrain] | None = None,
    buyer: BaselineBuyer | PhantomBuyer | None = None,
) -> list[tuple[RoomResult, list[Event]]]:
    scenario = phone()
    brains: dict[str, SellerBrain] = {s.agent_id: BaselineSeller() for s in scenario.sellers}
    brains |= sellers or {}
    with anyio.fail_after(60):
        rooms = await run_cast(
            scenario,
            scenario.buyer.items,
            nats_url=nats_url,
            store=store,
            subjects=subjects,
            options=options,
            buyer_brain=buyer or BaselineBuyer(),
            seller_brains=brains,
        )
    assert len(rooms) == len(scenario.buyer.items)
    out = []
    for room in rooms:
        events = await logged(store, room.negotiation_id)
        assert replay(events) == room.state  # the log is the truth, rogue or not
        out.append((room, events))
    return out


def _floors(events: list[Event]) -> dict[str, Decimal]:
    started = of_type(events, NegotiationStarted)[0]
    return {s.agent_id: s.least_price for s in started.sellers}


def _assert_safe(events: list[Event]) -> None:
    """Nothing unsafe committed, and the broker never had to step in."""
    floors = _floors(events)
    started = of_type(events, NegotiationStarted)[0]
    for r in of_type(events, SellerReplied):
        if r.offer is not None:
            assert r.offer.unit_price >= floors[r.seller], r
            assert r.offer.quantity == started.buyer.quantity, r
    for d in of_type(events, DealClosed):
        assert d.unit_price <= started.buyer.max_price
        standing = [
            r.offer
            for r in of_type(events, SellerReplied)
            if r.seller == d.seller and r.offer is not None and r.round <= d.round
        ]
        assert standing, f"deal with {d.seller}, who never offered"
        assert standing[-1] == Offer(unit_price=d.unit_price, quantity=d.quantity)
    assert not [g for g in of_type(events, GuardrailTripped) if g.resolution == "overridden"]
    ended = events[-1]
    assert isinstance(ended, NegotiationEnded)
    assert ended.status == "completed"


@pytest.mark.parametrize(
    ("mode", "rule", "resolution"),
    [
        ("repairs", "offer_below_floor", "repaired"),
        ("stubborn", "offer_below_floor", "fallback"),
        ("raises", "brain_error", "fallback"),
    ],
)
async def test_rogue_seller_never_commits_below_its_floor(
    mode: Mode, rule: str, resolution: str, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    rogue = FloorBreaker(mode)
    logs = await _run(
        nats_url,
        store,
        subjects,
        options=RunOptions(max_rounds=5, seed=3, round_timeout=10),
        sellers={ROGUE: rogue},
    )
    for _, events in logs:
        _assert_safe(events)
        trips = [g for g in of_type(events, GuardrailTripped) if g.agent == ROGUE]
        answered = [r for r in of_type(events, SellerReplied) if r.seller == ROGUE]
        assert answered, "the rogue seller still answers every round it is asked"
        assert len(trips) == len(answered)  # one trip per turn: every decision was bad
        assert {(g.rule, g.resolution) for g in trips} == {(rule, resolution)}
        floor = _floors(events)[ROGUE]
        offered = {r.offer.unit_price for r in answered if r.offer is not None}
        if mode == "repairs":
            assert offered == {floor}
            assert all(g.attempted and str(floor - 1) in g.attempted for g in trips)
        else:
            assert offered
            assert min(offered) > floor  # the fallback: its asking price
        if mode == "raises":
            assert all("garbage" in g.detail for g in trips)
        assert not [g for g in of_type(events, GuardrailTripped) if g.agent != ROGUE]
    turns = sum(len([r for r in of_type(ev, SellerReplied) if r.seller == ROGUE]) for _, ev in logs)
    assert rogue.repairs == (0 if mode == "raises" else turns)  # asked once per bad turn


@pytest.mark.parametrize("raises", [False, True], ids=["phantom_accept", "raises"])
async def test_rogue_buyer_never_closes_a_phantom_deal(
    raises: bool, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    max_rounds = 3
    logs = await _run(
        nats_url,
        store,
        subjects,
        options=RunOptions(max_rounds=max_rounds, seed=3, round_timeout=10),
        buyer=PhantomBuyer(raises=raises),
    )
    for room, events in logs:
        _assert_safe(events)
        assert not of_type(events, DealClosed)
        assert room.state.outcome is not None
        assert room.state.outcome.type == "max_rounds"
        assert room.state.outcome.unit_price is None
        trips = [g for g in of_type(events, GuardrailTripped) if g.agent == BUYER]
        assert {g.round for g in trips} == set(range(1, max_rounds + 1))  # every turn
        expected = "brain_error" if raises else "phantom_accept"
        assert {g.round for g in trips if g.rule == expected} == set(range(1, max_rounds + 1))
        # A phantom price may also be above the buyer's max: reported too, never hidden.
        assert {g.rule for g in trips} <= {expected, "accept_above_max"}
        assert {g.resolution for g in trips} == {"fallback"}
        # The fallback holds the room open and commits to nothing.
        assert {s.text for s in of_type(events, BuyerSaid)} == {HOLD_TEXT}


async def test_a_seller_that_never_answers_only_costs_deadlines(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    logs = await _run(
        nats_url,
        store,
        subjects,
        options=RunOptions(max_rounds=3, seed=3, round_timeout=0.5),
        sellers={ROGUE: Silent()},
    )
    for room, events in logs:
        _assert_safe(events)
        assert room.state.phase == "ended"
        assert not [r for r in of_type(events, SellerReplied) if r.seller == ROGUE]
        late = [c for c in of_type(events, RoundClosed) if c.reason == "deadline"]
        assert late
        assert all(ROGUE in c.unanswered for c in late)
