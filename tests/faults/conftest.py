"""Fixtures for the fault tests: processes on the real NATS and the test's own PostgreSQL
schema (as in tests/processes), and an event store in that schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from mams.bus.subjects import Subjects
from mams.storage.eventstore import PostgresEventStore
from mams.storage.pg import open_store
from tests.processes.helpers import Cast, cast, process_env, schema_dsn


@pytest.fixture
def market() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


@pytest.fixture
def dsn(database_url: str, pg_schema: str) -> str:
    return schema_dsn(database_url, pg_schema)


@pytest.fixture
def procs(tmp_path: Path, nats_url: str, dsn: str) -> Iterator[Cast]:
    """Children started in tmp_path with NATS_URL/DATABASE_URL set; all stopped after."""
    with cast(tmp_path, process_env(nats_url, dsn, tmp_path / "mams-data")) as c:
        yield c


@pytest.fixture
async def pg_store(
    database_url: str, pg_schema: str
) -> AsyncIterator[tuple[asyncpg.Pool, PostgresEventStore]]:
    """A migrated event store (no projector) in a schema of its own, and its pool."""
    pool, store = await open_store(database_url, pg_schema)
    try:
        yield pool, store
    finally:
        await pool.close()


@pytest.fixture
def subjects() -> Subjects:
    return Subjects(prefix=f"t{uuid.uuid4().hex[:12]}")
