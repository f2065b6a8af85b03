"""Fixtures for the audit tests: a real market run logged in the test's own schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import pytest

from mams.actors.market import RoomResult, RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.storage.eventstore import PostgresEventStore
from mams.storage.model import StoredEvent
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session
from tests.integration.scenarios import phone


class UnreadableStore(PostgresEventStore):
    """A store that cannot read streams: where work over a log is meant to run in worker
    processes (`mams.storage.parallel`), each reading on its own connection, this
    process's store must read nothing."""

    async def read_streams(
        self, stream_ids: Sequence[uuid.UUID], *, types: Sequence[str] | None = None
    ) -> dict[uuid.UUID, list[StoredEvent]]:
        raise AssertionError("the workers read the streams, not this process")


@dataclass(frozen=True)
class Market:
    pool: asyncpg.Pool
    store: PostgresEventStore
    rooms: list[RoomResult]


@pytest.fixture
async def market(database_url: str, pg_schema: str) -> AsyncIterator[Market]:
    """The phone scenario run to its end with baseline brains over an in-process bus."""
    pool, store = await open_store(database_url, pg_schema, projector=ReadModelProjector())
    try:
        scenario = phone()
        session_id = uuid.uuid4()
        async with pool.acquire() as conn:
            await save_session(conn, session_id, scenario)
        bus = InMemoryBus()

        async def connect(name: str) -> Bus:
            return bus

        rooms = await run_market(
            scenario,
            session_id,
            scenario.buyer.items,
            connect=connect,
            store=store,
            options=RunOptions(max_rounds=8, seed=7, round_timeout=10),
        )
        yield Market(pool, store, rooms)
    finally:
        await pool.close()


@pytest.fixture
async def other_schema(database_url: str) -> AsyncIterator[str]:
    """A second, empty schema (the import target); dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
