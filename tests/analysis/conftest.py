"""Fixtures: the hand-built log of logs.py written into the test's own PostgreSQL schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from mams.domain.events import encode_event, event_type
from mams.storage.eventstore import PostgresEventStore
from mams.storage.model import NewEvent
from mams.storage.observations import record_observations
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session
from tests.analysis import logs
from tests.audit.conftest import market
from tests.integration.scenarios import phone

__all__ = ["KnownLog", "known_log", "market"]  # market: a real baseline run (tests/audit)


@dataclass(frozen=True)
class KnownLog:
    pool: asyncpg.Pool
    store: PostgresEventStore
    schema: str


@pytest.fixture
async def known_log(database_url: str, pg_schema: str) -> AsyncIterator[KnownLog]:
    """Rooms A-D appended through the real store (read models projected), with the hand
    flags recorded in their companion streams, under session logs.SESSION."""
    pool, store = await open_store(database_url, pg_schema, projector=ReadModelProjector())
    try:
        async with pool.acquire() as conn:
            await save_session(conn, logs.SESSION, phone())
        for nid, room in logs.ROOMS.items():
            await store.append(
                [
                    NewEvent(nid, seq, uuid.uuid4(), event_type(e), encode_event(e))
                    for seq, e in enumerate(logs.events_of(room()), start=1)
                ]
            )
            await record_observations(PostgresEventStore(pool), nid, logs.FLAGS[nid])
        yield KnownLog(pool, store, pg_schema)
    finally:
        await pool.close()
