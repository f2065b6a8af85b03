"""A whole market over real NATS and real PostgreSQL: live run, log, read models, replay."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import pytest

from mams.actors.market import RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.domain.events import NegotiationEnded, decode_event
from mams.domain.negotiation import replay
from mams.domain.transcript import render
from mams.storage.eventstore import PostgresEventStore
from mams.storage.readmodels import list_runs, load_session, save_session
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration


async def test_market_runs_to_outcomes_and_replays(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    pool, store = db
    scenario = phone()
    session_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await save_session(conn, session_id, scenario)

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=name)

    seen: list[str] = []
    rooms = await run_market(
        scenario,
        session_id,
        scenario.buyer.items,
        connect=connect,
        store=store,
        options=RunOptions(max_rounds=8, seed=7, round_timeout=10),
        on_event=lambda nid, seq, event, state: seen.append(type(event).__name__),
    )
    assert len(rooms) == 2
    for room in rooms:
        outcome = room.state.outcome
        assert outcome is not None
        stored = await store.read(room.negotiation_id)
        events = [decode_event(e.data) for e in stored]
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert isinstance(events[-1], NegotiationEnded)
        replayed = replay(events)
        assert replayed.outcome == outcome
        assert render(events) == render(
            [decode_event(e.data) for e in await store.read(room.negotiation_id)]
        )
        if outcome.type == "deal":
            assert outcome.unit_price is not None
            seller = replayed.seller(outcome.seller or "")
            assert seller is not None
            assert outcome.unit_price >= seller.least_price
            assert outcome.unit_price <= Decimal("14.00")
    assert "SellerReplied" in seen
    async with pool.acquire() as conn:
        runs = await list_runs(conn, session_id=session_id)
        assert {r.status for r in runs} == {"completed"}
        assert {r.negotiation_id for r in runs} == {r.negotiation_id for r in rooms}
        count = await conn.fetchval("SELECT count(*) FROM messages")
        assert count > 0
        assert await load_session(conn, session_id) == scenario
