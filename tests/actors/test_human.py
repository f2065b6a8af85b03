"""A person as the buyer (`actors.human.HumanBuyer`) in the one runtime: the room runs as
any other (broker, sellers, the log), the person's actions are checked by the agent's own
guardrails before they are sent, and their turn has its own deadline."""

from __future__ import annotations

import uuid
from decimal import Decimal

import anyio
import pytest

from mams.actors.human import ActionRefusedError, HumanBuyer, NotYourTurnError
from mams.actors.market import RoomResult, RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.domain.events import Event, NegotiationEnded, NegotiationStarted
from mams.domain.messages import Accept, Say, WalkAway
from mams.domain.negotiation import NegotiationState
from mams.storage.eventstore import InMemoryEventStore
from tests.integration.scenarios import phone


async def play(
    human: HumanBuyer,
    store: InMemoryEventStore,
    options: RunOptions,
    item: str,
    opened: list[uuid.UUID] | None = None,
    told: anyio.Event | None = None,
) -> list[RoomResult]:
    """One room of the phone scenario with `human` as its buyer; its id goes to `opened`
    (and `told` is set) once it is open. As the API does, the person's seat is closed when
    the room ends."""
    bus = InMemoryBus()

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        if isinstance(event, NegotiationEnded):
            human.close(nid)

    def on_opened(rooms: list[RoomResult]) -> None:
        if opened is not None and told is not None:
            opened.extend(r.negotiation_id for r in rooms)
            told.set()

    async def connect(name: str) -> Bus:
        return bus

    scenario = phone()
    return await run_market(
        scenario,
        uuid.uuid4(),
        [scenario.buyer_item(item)],
        connect=connect,
        store=store,
        options=options,
        brains={scenario.buyer.agent_id: human},
        on_opened=on_opened,
        on_event=on_event,
    )


async def test_a_person_says_then_accepts_the_cheapest_offer_and_the_log_has_it() -> None:
    human, store = HumanBuyer(), InMemoryEventStore()
    options = RunOptions(seed=1, round_timeout=30, buyer_timeout=86_400)
    rooms: list[RoomResult] = []
    opened: list[uuid.UUID] = []
    told = anyio.Event()

    async def market() -> None:
        rooms.extend(await play(human, store, options, "USB-C cable", opened, told))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(market)
            await told.wait()
            [nid] = opened
            view = await human.next_turn(nid)
            assert view is not None
            assert view.round == 1
            assert not view.offers
            with pytest.raises(ActionRefusedError) as refused:  # no offer to accept yet
                human.act(nid, Accept(seller="techmart", unit_price=Decimal("5.50"), quantity=3))
            assert refused.value.problems[0].rule == "phantom_accept"
            human.act(nid, Say(text="What is your best price for 3?"))
            with pytest.raises(NotYourTurnError):  # the sellers' turn now
                human.act(nid, Say(text="again"))
            view = await human.next_turn(nid, after=1)
            assert view is not None
            assert view.round == 2
            assert view.offers
            seller, offer = min(view.offers.items(), key=lambda o: o[1].unit_price)
            with pytest.raises(ActionRefusedError) as refused:  # a price it never offered
                human.act(nid, Accept(seller=seller, unit_price=offer.unit_price - 1, quantity=3))
            assert refused.value.problems[0].rule == "phantom_accept"
            human.act(nid, Accept(seller=seller, unit_price=offer.unit_price, quantity=3))
    [room] = rooms
    assert room.state.outcome is not None
    assert room.state.outcome.type == "deal"
    assert room.state.outcome.unit_price == offer.unit_price
    started = room.state.started
    assert isinstance(started, NegotiationStarted)
    assert started.buyer.brain == "human"
    assert started.buyer_timeout == 86_400
    assert started.round_timeout == 30
    with anyio.fail_after(5):
        assert await human.next_turn(opened[0], after=2) is None  # the room is gone


async def test_a_person_who_never_acts_loses_the_turn_at_their_own_deadline() -> None:
    human, store = HumanBuyer(), InMemoryEventStore()
    options = RunOptions(seed=1, round_timeout=30, buyer_timeout=0.2, max_rounds=2)
    with anyio.fail_after(30):
        [room] = await play(human, store, options, "USB-C cable")
    assert room.state.ended is not None
    assert room.state.outcome is not None
    assert room.state.outcome.type == "max_rounds"


async def test_the_final_round_takes_only_accept_or_walk_away() -> None:
    human, store = HumanBuyer(), InMemoryEventStore()
    options = RunOptions(seed=1, round_timeout=30, buyer_timeout=600, max_rounds=2)
    rooms: list[RoomResult] = []
    opened: list[uuid.UUID] = []
    told = anyio.Event()

    async def market() -> None:
        rooms.extend(await play(human, store, options, "USB-C cable", opened, told))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(market)
            await told.wait()
            [nid] = opened
            assert await human.next_turn(nid) is not None
            human.act(nid, Say(text="Offers, please."))
            view = await human.next_turn(nid, after=1)
            assert view is not None
            assert view.final
            with pytest.raises(ActionRefusedError, match="final round"):
                human.act(nid, Say(text="one more round?"))
            human.act(nid, WalkAway(text="No, thanks."))
    [room] = rooms
    assert room.state.outcome is not None
    assert room.state.outcome.type == "no_deal"
