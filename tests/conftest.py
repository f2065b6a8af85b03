"""Shared fixtures: real NATS and real PostgreSQL, isolated per test.

NATS: `NATS_URL` (default nats://127.0.0.1:4222); each test gets a unique subject prefix.
PostgreSQL: `DATABASE_URL` (default postgresql://postgres@127.0.0.1:5432/test); each test
gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mams.storage.eventstore import PostgresEventStore
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


# A test that uses one of these fixtures (directly or through another) talks to a real
# server: it is marked `integration` here, so `pytest -m "not integration and not e2e"`
# runs the pure tests alone, with no NATS and no PostgreSQL.
_SERVER_FIXTURES = frozenset({"nats_url", "database_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a server `integration` (see _SERVER_FIXTURES)."""
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def nats_url() -> str:
    return os.environ.get("NATS_URL", DEFAULT_NATS_URL)


@pytest.fixture(scope="session")
def database_url() -> str:
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


@pytest.fixture
def subject_prefix() -> str:
    """A subject prefix no other test uses, so tests on one server never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_schema(database_url: str) -> AsyncIterator[str]:
    """A fresh schema for one test; dropped with everything in it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_store(
    database_url: str, pg_schema: str
) -> AsyncIterator[tuple[asyncpg.Pool, PostgresEventStore]]:
    """A migrated event store (no projector) in `pg_schema`, and its pool."""
    pool, store = await open_store(database_url, pg_schema)
    try:
        yield pool, store
    finally:
        await pool.close()


@pytest.fixture
async def db(
    database_url: str, pg_schema: str
) -> AsyncIterator[tuple[asyncpg.Pool, PostgresEventStore]]:
    """A pool and a PostgresEventStore with the read-model projector, on `pg_schema`."""
    pool, store = await open_store(database_url, pg_schema, projector=ReadModelProjector())
    try:
        yield pool, store
    finally:
        await pool.close()
