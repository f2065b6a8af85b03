"""Migrations: applied once, in order, safely from two connections at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from mams.storage.migrate import available, migrate
from mams.storage.pg import create_pool

EXPECTED_TABLES = {
    "schema_migrations",
    "events",
    "sessions",
    "buyer_configs",
    "seller_configs",
    "seller_inventory",
    "negotiation_runs",
    "messages",
    "outcomes",
    "room_owners",
    "studies",
    "session_drafts",  # 0011
    "api_tokens",  # 0012
    "experiments",  # 0013
    "experiment_arms",
}


@pytest.fixture
async def pool(database_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, schema=pg_schema, max_size=4)
    try:
        yield p
    finally:
        await p.close()


def test_files_are_versioned_and_ordered() -> None:
    versions = [v for v, _ in available()]
    assert versions[:2] == ["0001_events", "0002_read_models"]
    assert versions == sorted(versions)


async def test_migrate_applies_in_order_then_nothing(pool: asyncpg.Pool, pg_schema: str) -> None:
    async with pool.acquire() as conn:
        first = await migrate(conn)
        second = await migrate(conn)
    assert first == [v for v, _ in available()]
    assert second == []
    rows = await pool.fetch("SELECT version FROM schema_migrations ORDER BY applied_at, version")
    assert [r["version"] for r in rows] == first
    tables = {
        r["table_name"]
        for r in await pool.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", pg_schema
        )
    }
    assert tables == EXPECTED_TABLES


async def test_concurrent_migrations_apply_each_file_once(pool: asyncpg.Pool) -> None:
    results: list[list[str]] = []

    async def run() -> None:
        async with pool.acquire() as conn:
            results.append(await migrate(conn))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    applied = sorted(v for r in results for v in r)
    assert applied == [v for v, _ in available()]
    assert await pool.fetchval("SELECT count(*) FROM schema_migrations") == len(applied)


async def test_money_columns_are_exact_numerics(pool: asyncpg.Pool, pg_schema: str) -> None:
    async with pool.acquire() as conn:
        await migrate(conn)
    rows = await pool.fetch(
        "SELECT table_name, column_name, data_type, numeric_scale "
        "FROM information_schema.columns WHERE table_schema = $1 "
        "AND column_name LIKE ANY (ARRAY['%price%', 'total'])",
        pg_schema,
    )
    assert len(rows) == 8
    assert all((r["data_type"], r["numeric_scale"]) == ("numeric", 2) for r in rows)
    floats = await pool.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 "
        "AND data_type IN ('real', 'double precision')",
        pg_schema,
    )
    assert floats == 0


async def test_read_models_take_a_session(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await migrate(conn)
        sid = await conn.fetchval(
            "INSERT INTO sessions (session_id, name, scenario) "
            "VALUES (gen_random_uuid(), 'demo', $1) RETURNING session_id",
            b'{"items": []}',
        )
        await conn.execute(
            "INSERT INTO seller_configs VALUES ($1, '@TechMart', 'techmart', 'friendly', 0.6, 0.4)",
            sid,
        )
        await conn.execute(
            "INSERT INTO seller_inventory VALUES ($1, '@TechMart', 'Laptop', 700, 999.99, 850)",
            sid,
        )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO seller_inventory VALUES ($1, '@Nobody', 'Laptop', 1, 2, 1)", sid
            )
        assert await conn.fetchval("SELECT scenario FROM sessions") == b'{"items": []}'
