"""Several runs of a scenario in one market, and a cap on the rooms open at once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from mams.actors.market import RoomResult, RunOptions, run_market, run_seeds
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.domain.config import BuyerItem, Scenario
from mams.domain.events import Event, NegotiationEnded, NegotiationStarted
from mams.domain.negotiation import NegotiationState
from mams.storage.eventstore import InMemoryEventStore
from tests.integration.scenarios import phone


async def in_memory(
    scenario: Scenario, items: Sequence[BuyerItem], **kwargs: Any
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
        options=RunOptions(seed=1, max_rounds=6, round_timeout=10),
        **kwargs,
    )


def test_run_r_has_seed_plus_r() -> None:
    assert run_seeds(RunOptions(seed=7), 1) == [RunOptions(seed=7)]
    assert [o.seed for o in run_seeds(RunOptions(seed=7), 3)] == [7, 8, 9]
    assert [o.seed for o in run_seeds(RunOptions(), 2)] == [0, 1]


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
