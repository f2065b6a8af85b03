"""Pool creation: unreachable servers become DatabaseUnavailable, passwords stay hidden."""

from __future__ import annotations

import pytest

from mams.storage.errors import DatabaseUnavailable, redact_dsn
from mams.storage.pg import create_pool, open_store


async def test_refused_connection_is_database_unavailable() -> None:
    dsn = "postgresql://mams:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(DatabaseUnavailable) as caught:
        await create_pool(dsn)
    message = str(caught.value)
    assert "hunter2" not in message
    assert "127.0.0.1:1" in message
    assert "unset DATABASE_URL" in message


async def test_missing_socket_is_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable):
        await open_store("postgresql://postgres@/x?host=/nonexistent-mams-socket-dir")


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:p@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_a_released_connection_has_no_open_transaction(
    database_url: str, pg_schema: str
) -> None:
    # The pool skips asyncpg's reset query, but never hands out a connection mid-transaction.
    pool = await create_pool(database_url, schema=pg_schema, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await pool.close()


@pytest.mark.parametrize(("durable", "expected"), [(True, "on"), (False, "off")])
async def test_relaxed_durability_commits_without_waiting_for_the_disk(
    database_url: str, pg_schema: str, durable: bool, expected: str
) -> None:
    pool, _ = await open_store(database_url, pg_schema, durable=durable)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == expected
            assert await conn.fetchval("SHOW search_path") == f'"{pg_schema}"'
    finally:
        await pool.close()


@pytest.mark.parametrize(("durable", "expected"), [(True, "on"), (False, "off")])
async def test_the_commands_servers_open_the_store_as_asked(
    database_url: str, pg_schema: str, durable: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `mams broker|run --durability relaxed` reach the store through cmd.infra.servers.
    from mams.infra import servers
    from tests.processes.helpers import schema_dsn

    monkeypatch.setenv("DATABASE_URL", schema_dsn(database_url, pg_schema))
    async with servers(need_bus=False, durable=durable) as srv, srv.pool.acquire() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == expected
