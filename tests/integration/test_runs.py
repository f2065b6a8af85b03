"""Several runs of a scenario in one market, and a cap on the rooms open at once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from mams.actors.broker import MAX_RUNS
from mams.actors.market import RoomResult, RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import BuyerItem, Scenario, scenario_to_raw
from mams.domain.events import Event, NegotiationEnded, NegotiationStarted
from mams.domain.messages import OpenRooms, Rejected, RoomsOpened, decode_inbox
from mams.domain.negotiation import NegotiationState
from mams.storage.eventstore import InMemoryEventStore
from tests.integration.helpers import MemorySessions, broker_rig
from tests.integration.scenarios import phone
from tests.integration.test_broker_robustness import BUYER, Store


async def in_memory(
    scenario: Scenario,
    items: Sequence[BuyerItem],
    *,
    runs: int = 1,
    max_open: int | None = None,
    **kwargs: Any,
) -> list[RoomResult]:
    """run_market over an in-memory bus and log, seed 1, 6 rounds at most."""
    bus = InMemoryBus()

    async def connect(name: str) -> Bus:
        return bus

    return await run_market(
        scenario,
        uuid.uuid4(),
        items,
        connect=connect,
        store=InMemoryEventStore(),
        options=RunOptions(
            seed=1, max_rounds=6, round_timeout=10, runs=runs, rooms_at_once=max_open
        ),
        **kwargs,
    )


@pytest.mark.parametrize(("max_open", "peak"), [(2, 2), (None, 6)])
async def test_runs_open_at_most_max_open_rooms_at_once(max_open: int | None, peak: int) -> None:
    scenario = phone()
    open_now: set[uuid.UUID] = set()
    seen_peak = 0

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        nonlocal seen_peak
        if isinstance(event, NegotiationStarted):
            open_now.add(nid)
            seen_peak = max(seen_peak, len(open_now))
        elif isinstance(event, NegotiationEnded):
            open_now.discard(nid)

    rooms = await in_memory(
        scenario, scenario.buyer.items, on_event=on_event, runs=3, max_open=max_open
    )
    assert seen_peak == peak
    assert len(rooms) == 3 * len(scenario.buyer.items) == 6
    assert all(r.state.phase == "ended" and r.state.ended is not None for r in rooms)
    assert [r.state.started.seed for r in rooms if r.state.started] == [1, 1, 2, 2, 3, 3]
    assert [r.item_name for r in rooms[:2]] == [i.item_name for i in scenario.buyer.items]


async def test_rooms_a_study_completed_are_skipped() -> None:
    scenario = phone()
    first, second = (i.item_name for i in scenario.buyer.items)
    skip = {(first, 1), (second, 2), ("not an item", 1)}
    rooms = await in_memory(scenario, scenario.buyer.items, runs=2, skip=skip)
    assert [(r.item_name, r.state.started.seed if r.state.started else None) for r in rooms] == [
        (second, 1),
        (first, 2),
    ]
    # Everything skipped: nothing runs, nothing hangs.
    assert await in_memory(scenario, scenario.buyer.items[:1], skip={(first, 1)}) == []


@pytest.mark.integration
async def test_open_rooms_opens_every_run_of_every_item(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    scenario = phone()
    names = tuple(i.item_name for i in scenario.buyer.items)
    with anyio.fail_after(30):
        async with broker_rig(nats_url, store, subjects) as rig:
            rig.broker.sessions = MemorySessions()
            rig.broker.configurers = frozenset({BUYER})  # the operator lets it send scenarios
            inbox = await rig.raw.subscribe(subjects.inbox(AgentId(BUYER)))

            async def answer(request: OpenRooms) -> RoomsOpened | Rejected:
                await rig.send(BUYER, request)
                async for msg in inbox:
                    m = decode_inbox(msg.data)
                    if isinstance(m, RoomsOpened | Rejected) and m.request_id == request.request_id:
                        return m
                raise AssertionError("the inbox closed")

            raw = scenario_to_raw(scenario)
            opened = await answer(
                OpenRooms(request_id=uuid.uuid4(), scenario=raw, seed=4, runs=3, max_rounds=4)
            )
            assert isinstance(opened, RoomsOpened)
            assert opened.items == names * 3
            assert len(set(opened.negotiation_ids)) == 3 * len(names)
            seeds: dict[uuid.UUID, tuple[str, int | None]] = {}
            while len(seeds) < len(opened.negotiation_ids):
                started = await rig.wait_for(NegotiationStarted)
                seeds[started.negotiation_id] = (started.item_name, started.seed)
            assert [seeds[n] for n in opened.negotiation_ids] == [
                (name, seed) for seed in (4, 5, 6) for name in names
            ]
            refused = await answer(
                OpenRooms(request_id=uuid.uuid4(), scenario=raw, runs=MAX_RUNS + 1)
            )
            assert isinstance(refused, Rejected)
            assert f"runs must be from 1 to {MAX_RUNS}" in refused.reason
            # What a study already has (skip) is not opened again: run 5 of the first
            # item, and all of run 6 (its item named in another case), are left out.
            session = opened.session_id
            had = ((names[0], 5), *((name.upper(), 6) for name in names))
            rest = await answer(
                OpenRooms(request_id=uuid.uuid4(), session_id=session, seed=4, runs=3, skip=had)
            )
            assert isinstance(rest, RoomsOpened)
            assert rest.session_id == session
            opened_now: dict[uuid.UUID, tuple[str, int | None]] = {}
            while len(opened_now) < len(rest.negotiation_ids):
                started = await rig.wait_for(NegotiationStarted)
                if started.negotiation_id in rest.negotiation_ids:
                    opened_now[started.negotiation_id] = (started.item_name, started.seed)
            assert sorted(opened_now.values()) == sorted(
                [(name, 4) for name in names] + [(name, 5) for name in names[1:]]
            )
            everything = ((name, seed) for seed in (4, 5, 6) for name in names)
            nothing = await answer(
                OpenRooms(
                    request_id=uuid.uuid4(),
                    session_id=session,
                    seed=4,
                    runs=3,
                    skip=tuple(everything),
                )
            )
            assert isinstance(nothing, Rejected)
            assert "nothing to open" in nothing.reason
