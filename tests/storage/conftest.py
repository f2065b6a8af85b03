"""Fixtures for storage tests: a migrated store inside the test's own schema."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from mams.storage.eventstore import PostgresEventStore
from mams.storage.pg import open_store


@pytest.fixture
async def pg_store(
    database_url: str, pg_schema: str
) -> AsyncIterator[tuple[asyncpg.Pool, PostgresEventStore]]:
    """A pool and a PostgresEventStore on a freshly migrated schema."""
    pool, store = await open_store(database_url, pg_schema)
    try:
        yield pool, store
    finally:
        await pool.close()
