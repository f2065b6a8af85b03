"""Connecting to PostgreSQL: pools with the right codecs and search_path, and store setup."""

from __future__ import annotations

import asyncpg

from mams.storage.errors import translating
from mams.storage.eventstore import PostgresEventStore, Projector
from mams.storage.migrate import migrate

# jsonb travels in binary form: a version byte (1) then the JSON text. Values are UTF-8
# JSON bytes both ways, so event data is never decoded into Python objects and re-encoded.
_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _JSONB_VERSION + value


def _decode_jsonb(value: bytes) -> bytes:
    return value[1:]


async def init_connection(conn: asyncpg.Connection) -> None:
    """Give a connection the MAMS jsonb codec: parameters and results are UTF-8 JSON bytes.

    `create_pool` calls this on every connection; call it yourself on a bare connection.
    """
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (schema or table name) for use in SQL text."""
    return '"' + name.replace('"', '""') + '"'


async def create_pool(
    dsn: str,
    *,
    schema: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    durable: bool = True,
) -> asyncpg.Pool:
    """Open a connection pool; with `schema`, every connection works inside that schema.
    With `durable=False` its commits return before their WAL reaches disk
    (`synchronous_commit = off`; see `open_store`).

    Connections get the jsonb codec of `init_connection`. A server that cannot be reached
    raises DatabaseUnavailable (naming the DSN without its password).

    A released connection goes back without asyncpg's reset query (advisory unlock, CLOSE
    ALL, UNLISTEN, RESET ALL: a round trip on every release, so on every group commit):
    MAMS holds no session state on pooled connections (no SET, LISTEN, cursors or advisory
    locks); a transaction left open is still rolled back.
    """
    settings = {"search_path": quote_ident(schema)} if schema is not None else {}
    if not durable:
        settings["synchronous_commit"] = "off"
    with translating(dsn):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=settings or None,
            init=init_connection,
            reset=_rollback_if_open,
        )
    return pool


async def _rollback_if_open(conn: asyncpg.Connection) -> None:
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def open_store(
    dsn: str,
    schema: str | None = None,
    *,
    projector: Projector | None = None,
    max_size: int = 10,
    durable: bool = True,
) -> tuple[asyncpg.Pool, PostgresEventStore]:
    """Open a pool, apply pending migrations, and return the pool and an event store.

    `durable=False` (`--durability relaxed`) trades durability for latency: a commit
    returns once PostgreSQL has applied it, before its WAL is flushed to disk, so the
    broker delivers what is committed but not yet on disk. A crash of PostgreSQL or of
    its machine can then lose the last moments of the log (about 0.6 s with the default
    wal_writer_delay) after agents saw them; a broker crash or a PostgreSQL restart
    loses nothing. It removes the disk's flush stalls from every message's path.

    The caller owns the pool: `await pool.close()` when done.
    """
    pool = await create_pool(dsn, schema=schema, max_size=max_size, durable=durable)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except BaseException:
        await pool.close()
        raise
    return pool, PostgresEventStore(pool, projector, dsn=dsn)
