"""Apply the versioned SQL files in `mams.storage.migrations`, each once, in order."""

from __future__ import annotations

import re
from importlib import resources

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from mams.storage.errors import StorageError, translating

log = structlog.get_logger(__name__)

_FILE = re.compile(r"^(\d{4}_[a-z0-9_]+)\.sql$")

# Session-level advisory lock, keyed by the target schema, so two processes starting at
# once apply each file exactly once while other schemas (parallel tests) are not blocked.
_LOCK = "SELECT pg_advisory_lock(hashtextextended('mams.migrate:' || current_schema(), 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('mams.migrate:' || current_schema(), 0))"

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def available() -> list[tuple[str, str]]:
    """Every migration shipped with the package, as (version, sql), in version order."""
    found: list[tuple[str, str]] = []
    for entry in resources.files("mams.storage.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((match.group(1), entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: asyncpg.Connection | PoolConnectionProxy) -> list[str]:
    """Apply pending migrations to the connection's current schema; return their versions.

    Each file runs in its own transaction together with its row in `schema_migrations`,
    so a failing file leaves nothing behind. Idempotent; safe to run concurrently.
    """
    with translating():
        schema = await conn.fetchval("SELECT current_schema()")
        if schema is None:
            raise StorageError(
                "no schema to migrate: the search_path names no existing schema; "
                "create the schema first"
            )
        await conn.execute(_LOCK)
        try:
            await conn.execute(_LEDGER)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied: list[str] = []
            for version, sql in available():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
                log.info("storage.migration_applied", version=version, schema=schema)
                applied.append(version)
            return applied
        finally:
            await conn.execute(_UNLOCK)
