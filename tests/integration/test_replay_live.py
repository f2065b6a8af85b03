"""Replay equals live (invariant 4): the log alone gives back what the live run showed.

The live side is what run_market's observer folded from the committed events it received
on the bus; the replay side is `replay` over the events read back from PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from uuid import UUID

import anyio
import asyncpg
import pytest

from mams.actors.market import RunOptions, run_market
from mams.bus.subjects import Subjects
from mams.domain.events import Event, encode_event
from mams.domain.negotiation import NegotiationState, replay
from mams.domain.transcript import render
from mams.storage.eventstore import PostgresEventStore
from tests.integration.helpers import logged, nats_connect
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

Store = tuple[asyncpg.Pool, PostgresEventStore]


@pytest.mark.parametrize("seed", [7, 2024])
async def test_replay_of_the_log_equals_the_live_run(
    seed: int, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    scenario = phone()
    live: dict[UUID, list[tuple[int, Event]]] = defaultdict(list)
    live_states: dict[UUID, list[NegotiationState]] = defaultdict(list)

    def on_event(nid: UUID, seq: int, event: Event, state: NegotiationState) -> None:
        live[nid].append((seq, event))
        live_states[nid].append(state)

    with anyio.fail_after(60):
        rooms = await run_market(
            scenario,
            uuid.uuid4(),
            scenario.buyer.items,
            connect=nats_connect(nats_url),
            store=store,
            options=RunOptions(max_rounds=8, seed=seed, round_timeout=10),
            on_event=on_event,
            subjects=subjects,
        )

    assert {r.negotiation_id for r in rooms} == set(live)
    for room in rooms:
        nid = room.negotiation_id
        stored = await logged(store, nid)
        seen = live[nid]
        # The observer got every committed event once, in seq order, and the same events.
        assert [seq for seq, _ in seen] == list(range(1, len(stored) + 1))
        assert [e for _, e in seen] == stored
        assert [encode_event(e) for _, e in seen] == [encode_event(e) for e in stored]
        # Same final state, and the same state after every prefix of the stream.
        assert room.state.phase == "ended"
        assert replay(stored) == room.state
        for n, state in enumerate(live_states[nid], start=1):
            assert replay(stored[:n]) == state
        assert replay(stored).outcome == room.state.outcome
        # The same transcript, line for line.
        live_lines = [entry.plain() for entry in render(e for _, e in seen)]
        assert [entry.plain() for entry in render(stored)] == live_lines
        assert render(stored) == render(e for _, e in seen)
        assert any(room.item_name in line for line in live_lines)
