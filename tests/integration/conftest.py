"""Fixtures for the integration tests: an event store in the test's own schema."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from mams.bus.subjects import Subjects
from mams.storage.eventstore import PostgresEventStore
from mams.storage.pg import open_store


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
def subjects(subject_prefix: str) -> Subjects:
    """Subjects under a prefix no other test uses."""
    return Subjects(prefix=subject_prefix)
