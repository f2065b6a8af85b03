"""The read-model queries the commands use (storage/readmodels.py), on a real PostgreSQL:
each returns what the tables hold, typed, and a lost database is a DatabaseUnavailable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from mams.domain.events import encode_event, event_type
from mams.storage.errors import DatabaseUnavailable
from mams.storage.eventstore import PostgresEventStore
from mams.storage.export import restamp
from mams.storage.model import NewEvent
from mams.storage.pg import create_pool
from mams.storage.readmodels import (
    RunState,
    SessionRecord,
    count_runs,
    count_sessions,
    database_now,
    finished_runs,
    last_plan,
    negotiation_ids,
    rename_session,
    restamp_session,
    run_states,
    runs_started_since,
    save_plan,
    session_negotiation_ids,
    sessions_of_runs,
)
from tests.domain.helpers import NID, SID, started
from tests.storage.test_readmodels import add_session, negotiation

NID2 = uuid.UUID("00000000-0000-4000-8000-000000000003")
OTHER = uuid.UUID("00000000-0000-4000-8000-00000000000f")


def opened_only() -> list[NewEvent]:
    """A second room of the session, on another item with no seed, still running."""
    e = msgspec.structs.replace(started(), negotiation_id=NID2, item_name="cable", seed=None)
    return [NewEvent(NID2, 1, uuid.uuid4(), event_type(e), encode_event(e))]


async def test_run_queries(db: tuple[asyncpg.Pool, PostgresEventStore]) -> None:
    pool, store = db
    await add_session(pool)
    await store.append(negotiation())
    between = await database_now(pool)
    await store.append(opened_only())

    assert await count_sessions(pool) == 1
    assert (await count_runs(pool), await count_runs(pool, SID)) == (2, 2)
    assert await count_runs(pool, OTHER) == 0
    assert await negotiation_ids(pool) == [NID, NID2]
    assert await negotiation_ids(pool, OTHER) == []
    assert await session_negotiation_ids(pool, SID) == [NID, NID2]
    assert await finished_runs(pool) == {NID: True, NID2: False}
    assert await finished_runs(pool, NID2) == {NID2: False}
    assert await run_states(pool, SID) == [
        RunState(negotiation_id=NID, item_name="iPhone 15 case", seed=7, status="completed"),
        RunState(negotiation_id=NID2, item_name="cable", seed=None, status="running"),
    ]
    assert await run_states(pool, SID, ("running",)) == [
        RunState(negotiation_id=NID2, item_name="cable", seed=None, status="running")
    ]
    assert await runs_started_since(pool, SID, between) == [(NID2, "cable")]
    assert await runs_started_since(pool, SID, between, [NID]) == [
        (NID, "iPhone 15 case"),
        (NID2, "cable"),
    ]

    [record] = await sessions_of_runs(pool, [NID, NID2, OTHER])
    assert (record.session_id, record.name, msgspec.json.decode(record.scenario)) == (
        SID,
        "t",
        {},
    )
    then = datetime(2024, 5, 1, 12, tzinfo=UTC)
    await restamp_session(pool, SID, then)
    assert await sessions_of_runs(pool, [NID]) == [
        SessionRecord(session_id=SID, name="t", created_at=then, scenario=record.scenario)
    ]
    await rename_session(pool, SID, None, then)
    [renamed] = await sessions_of_runs(pool, [NID])
    assert renamed.name is None


async def test_plans_newest_first(db: tuple[asyncpg.Pool, PostgresEventStore]) -> None:
    pool, _ = db
    await add_session(pool)
    assert await last_plan(pool, SID) is None
    await save_plan(pool, SID, b'{"runs": 1}')
    await save_plan(pool, SID, b'{"runs": 2}')
    stored = await last_plan(pool, SID)
    assert stored is not None
    assert msgspec.json.decode(stored[0]) == {"runs": 2}
    assert isinstance(stored[1], datetime)


async def test_restamp_gives_runs_the_times_of_their_events(
    db: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    pool, store = db
    await add_session(pool)
    await store.append(negotiation())
    stored = await store.read(NID)
    then = datetime(2024, 5, 1, 12, tzinfo=UTC)
    await restamp(pool, [[msgspec.structs.replace(e, recorded_at=then) for e in stored]])
    row = await pool.fetchrow(
        "SELECT started_at, ended_at FROM negotiation_runs WHERE negotiation_id = $1", NID
    )
    assert row is not None
    assert (row["started_at"], row["ended_at"]) == (then, then)


async def test_a_closed_pool_is_database_unavailable(database_url: str, pg_schema: str) -> None:
    # Before, the commands ran this SQL on the pool themselves: asyncpg's InterfaceError
    # escaped as a traceback instead of the storage error the CLI reports.
    pool = await create_pool(database_url, schema=pg_schema)
    await pool.close()
    with pytest.raises(DatabaseUnavailable, match="start PostgreSQL"):
        await count_sessions(pool)
    with pytest.raises(DatabaseUnavailable):
        await finished_runs(pool)
