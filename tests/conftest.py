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

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


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
