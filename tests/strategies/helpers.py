"""Rooms of a small market played with given strategies, through `run_market` on an
in-memory bus and log (baseline brains unless a test sets models)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from mams.actors.market import RoomResult, RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.domain.config import Scenario, parse_scenario, scenario_to_raw
from mams.domain.events import Event, NegotiationStarted
from mams.storage.eventstore import InMemoryEventStore
from tests.integration.scenarios import phone

ITEM = "iPhone 15 case"  # three sellers stock it


def with_strategies(
    buyer: str | None = None,
    sellers: str | None = None,
    defined: Mapping[str, Mapping[str, Any]] | None = None,
) -> Scenario:
    """The test phone market with the buyer's and every seller's `strategy` set (as an
    experiment's arm sets it: in the scenario mapping) and `[strategies]` of its own."""
    raw = scenario_to_raw(phone())
    if buyer is not None:
        raw["buyer"]["strategy"] = buyer
    if sellers is not None:
        for seller in raw["sellers"]:
            seller["strategy"] = sellers
    if defined is not None:
        raw["strategies"] = {name: dict(entry) for name, entry in defined.items()}
    return parse_scenario(raw)


async def play(
    scenario: Scenario, *, seed: int = 1, runs: int = 1, max_rounds: int = 10, **models: str
) -> tuple[list[RoomResult], InMemoryEventStore]:
    """`runs` rooms of ITEM (seeds `seed`, `seed + 1`, ...); the rooms and the log."""
    bus = InMemoryBus()

    async def connect(name: str) -> Bus:
        return bus

    store = InMemoryEventStore()
    options = RunOptions(
        seed=seed,
        runs=runs,
        max_rounds=max_rounds,
        round_timeout=30,
        buyer_model=models.get("buyer_model", "baseline"),
        seller_model=models.get("seller_model", "baseline"),
    )
    rooms = await run_market(
        scenario,
        uuid.uuid4(),
        [scenario.buyer_item(ITEM)],
        connect=connect,
        store=store,
        options=options,
    )
    return rooms, store


async def events(store: InMemoryEventStore, room: RoomResult) -> list[Event]:
    """A room's events as the log holds them."""
    decoder = msgspec.json.Decoder(Event)
    return [decoder.decode(e.data) for e in await store.read(room.negotiation_id)]


async def started(store: InMemoryEventStore, room: RoomResult) -> NegotiationStarted:
    """A room's opening event."""
    first = (await events(store, room))[0]
    assert isinstance(first, NegotiationStarted)
    return first
