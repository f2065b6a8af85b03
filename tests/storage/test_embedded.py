"""The embedded PostgreSQL: starts in a given data dir, migrates, keeps data across restarts."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from mams.storage.embedded import EmbeddedPostgres, default_data_dir
from mams.storage.pg import open_store
from tests.processes.pgdata import embedded_data_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """Where the server's data goes (reachable by its system user when run as root)."""
    with embedded_data_dir() as path:
        yield path


def test_data_dir_follows_mams_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAMS_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path / "postgres"
    monkeypatch.delenv("MAMS_DATA_DIR")
    assert default_data_dir().name == "postgres"


async def test_rows_survive_a_restart(pg_root: Path) -> None:
    data_dir = pg_root / "pg"
    async with EmbeddedPostgres(data_dir) as pg:
        pool, _ = await open_store(pg.dsn)
        try:
            await pool.execute(
                "INSERT INTO sessions (session_id, name, scenario) "
                "VALUES (gen_random_uuid(), 'kept', '{}')"
            )
        finally:
            await pool.close()
        first_dsn = pg.dsn

    async with EmbeddedPostgres(data_dir) as pg:
        assert pg.dsn == first_dsn
        pool, _ = await open_store(pg.dsn)  # migrations already applied: a no-op
        try:
            assert await pool.fetchval("SELECT name FROM sessions") == "kept"
            assert await pool.fetchval("SHOW server_version_num") >= "160000"
        finally:
            await pool.close()


_OTHER_PROCESS = """
import anyio, asyncpg, sys
from mams.storage.embedded import EmbeddedPostgres

async def main() -> None:
    async with EmbeddedPostgres(sys.argv[1]) as pg:
        conn = await asyncpg.connect(pg.dsn)
        pid = await conn.fetchval("SELECT pg_postmaster_start_time()::text")
        await conn.execute("INSERT INTO shared (who) VALUES ('other')")
        await conn.close()
        print('RESULT=' + pid)

anyio.run(main)
"""


async def test_a_second_process_shares_the_running_server(tmp_path: Path, pg_root: Path) -> None:
    data_dir = pg_root / "pg"
    async with EmbeddedPostgres(data_dir) as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute("CREATE TABLE shared (who text)")
            started = await conn.fetchval("SELECT pg_postmaster_start_time()::text")
            result = await anyio.run_process(
                [sys.executable, "-c", textwrap.dedent(_OTHER_PROCESS), str(data_dir)],
                cwd=tmp_path,
            )
            # Same postmaster, and its exit did not stop the server we still hold.
            # (structlog is unconfigured there and logs to stdout too, hence the marker)
            lines = result.stdout.decode().splitlines()
            assert [ln.removeprefix("RESULT=") for ln in lines if ln.startswith("RESULT=")] == [
                started
            ]
            assert await conn.fetchval("SELECT who FROM shared") == "other"
        finally:
            await conn.close()
