"""Which broker serves which open room, so that no two brokers ever serve the same one.

A broker that resumes rooms from the log (`Broker.resume`: after a crash, or
`mams run --resume`) must take only the rooms whose broker is gone, never those a live
broker is serving: another `mams broker` on the same database, or the broker inside a
`mams run` still going. Each broker has an owner id; every room it opens is claimed in
`room_owners` before the room's first event is committed, and the broker is alive while
its own connection holds the advisory lock of that id (migration 0007). PostgreSQL
releases the lock the moment that connection ends, however the process died (SIGKILL
included), so "alive" needs no heartbeat and no timeout.

A room with no owner row (opened before migration 0007) counts as having no live broker.
Owner rows stay after a room ends: they record which broker ran it.

A database restart ends every connection, so a broker's lock is released while the
database is away: `PgLeases.keep` takes it again as soon as the database is back, and
reports any of its rooms another broker took over in that window (the broker then stops
serving them).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, Self, TypeVar
from uuid import UUID

import anyio
import asyncpg
import structlog

from mams.storage.errors import DatabaseUnavailable, translating
from mams.storage.readmodels import Queries
from mams.storage.retry import retrying

log = structlog.get_logger("mams.leases")

_T = TypeVar("_T")

# Inline rather than mams_broker_key(): the lock's connection need not have the schema of
# the tables on its search_path (advisory locks are per database).
_LOCK = "SELECT pg_advisory_lock(hashtextextended('mams.broker:' || $1::text, 0))"

# A broker whose host vanishes without closing its connection (power, network) would keep
# its lock until the server's TCP keepalive gives up (two hours by default): ask the server
# to probe this connection after 10 s of silence, so such a broker counts as gone within
# about 25 s. (Ignored on a Unix socket, where a dead process's socket closes at once.)
_KEEPALIVE = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}

_CLAIM = """
INSERT INTO room_owners (negotiation_id, owner)
SELECT unnest($1::uuid[]), $2
ON CONFLICT (negotiation_id) DO NOTHING
"""

# Rows whose broker is gone change hands (a concurrent taker waits on the row lock, then
# sees a live owner: one winner); rooms with no row are inserted; rooms already ours stay.
_TAKE_OVER = """
WITH wanted AS (SELECT DISTINCT unnest($1::uuid[]) AS nid),
taken AS (
    UPDATE room_owners o SET owner = $2, claimed_at = now()
    FROM wanted w
    WHERE o.negotiation_id = w.nid AND o.owner <> $2 AND NOT mams_broker_alive(o.owner)
    RETURNING o.negotiation_id
),
fresh AS (
    INSERT INTO room_owners (negotiation_id, owner)
    SELECT w.nid, $2 FROM wanted w
    WHERE NOT EXISTS (SELECT 1 FROM room_owners o WHERE o.negotiation_id = w.nid)
    ON CONFLICT (negotiation_id) DO NOTHING
    RETURNING negotiation_id
)
SELECT negotiation_id FROM taken
UNION ALL SELECT negotiation_id FROM fresh
UNION ALL SELECT negotiation_id FROM room_owners WHERE negotiation_id = ANY($1) AND owner = $2
"""

_LIVE = """
SELECT negotiation_id FROM room_owners
WHERE negotiation_id = ANY($1) AND owner <> $2 AND mams_broker_alive(owner)
"""

_NOT_MINE = "SELECT negotiation_id FROM room_owners WHERE negotiation_id = ANY($1) AND owner <> $2"


class Leases(Protocol):
    """A broker's hold on the rooms it serves (see the module docstring)."""

    owner: UUID

    async def claim(self, ids: Sequence[UUID]) -> None:
        """Record these new rooms as this broker's (before their first commit)."""
        ...

    async def take_over(self, ids: Sequence[UUID]) -> list[UUID]:
        """Of these rooms, those this broker may serve: already its own, unowned, or
        owned by a broker that is gone (taken over here). In the order given."""
        ...

    async def keep(
        self,
        serving: Callable[[], Sequence[UUID]],
        on_lost: Callable[[list[UUID]], Awaitable[None]],
    ) -> None:
        """Hold the lease until cancelled: when the database comes back after losing the
        lock's connection, take the lock again and pass to `on_lost` those of `serving()`
        another broker took over meanwhile."""
        ...


async def live_rooms(
    conn: Queries, ids: Sequence[UUID], *, besides: UUID | None = None
) -> set[UUID]:
    """Of these rooms, those a live broker (other than `besides`) is serving. `conn` is a
    pool or a connection on the store's schema."""
    with translating():
        rows = await conn.fetch(_LIVE, list(ids), besides or uuid.UUID(int=0))
    return {r["negotiation_id"] for r in rows}


class PgLeases:
    """Leases in PostgreSQL: the tables through `pool` (the store's schema), the lock on a
    connection of its own to `dsn`. Use as `async with PgLeases(pool, dsn) as leases:`;
    leaving releases the lock (so do a crash and a closed connection)."""

    def __init__(
        self, pool: asyncpg.Pool, dsn: str, *, owner: UUID | None = None, check_every: float = 1.0
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.owner = owner or uuid.uuid4()
        self.check_every = check_every
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Self:
        self._conn = await self._lock()
        log.info("leases.held", owner=str(self.owner))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the lock: this broker's rooms are free to be taken over."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=5)
                except Exception:  # closing a broken connection: drop it
                    conn.terminate()

    async def _lock(self) -> asyncpg.Connection:
        with translating(self.dsn):
            conn: asyncpg.Connection = await asyncpg.connect(self.dsn, server_settings=_KEEPALIVE)
            try:
                await conn.execute(_LOCK, str(self.owner))
            except BaseException:
                conn.terminate()
                raise
        return conn

    async def claim(self, ids: Sequence[UUID]) -> None:
        """Record these new rooms as this broker's."""
        with translating(self.dsn):
            await self.pool.execute(_CLAIM, list(ids), self.owner)

    async def take_over(self, ids: Sequence[UUID]) -> list[UUID]:
        """Of these rooms, those this broker may serve (see `Leases.take_over`)."""
        if not ids:
            return []
        with translating(self.dsn):
            rows = await self.pool.fetch(_TAKE_OVER, list(ids), self.owner)
        mine = {r["negotiation_id"] for r in rows}
        return [nid for nid in ids if nid in mine]

    async def alive(self) -> bool:
        """Whether the lock's connection still answers."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            with anyio.fail_after(max(self.check_every, 1.0) * 5):
                await conn.fetchval("SELECT 1")
        except Exception:  # any failure: presume the lock lost (keep takes it again)
            return False
        return True

    async def keep(
        self,
        serving: Callable[[], Sequence[UUID]],
        on_lost: Callable[[list[UUID]], Awaitable[None]],
    ) -> None:
        """Hold the lease until cancelled (see `Leases.keep`)."""
        while True:
            await anyio.sleep(self.check_every)
            if await self.alive():
                continue
            log.warning("leases.lock_lost", owner=str(self.owner))
            if self._conn is not None:
                self._conn.terminate()
            self._conn = await self._relock()
            lost = await self._not_mine(list(serving()))
            log.info("leases.lock_taken_again", owner=str(self.owner), rooms_lost=len(lost))
            if lost:
                log.error(
                    "leases.rooms_taken_over",
                    owner=str(self.owner),
                    rooms=[str(n) for n in lost],
                    why="another broker took them over while the database was away",
                )
                await on_lost(lost)

    async def _relock(self) -> asyncpg.Connection:
        return await _until_done(self._lock, "leases.relock_failed")

    async def _not_mine(self, ids: list[UUID]) -> list[UUID]:
        async def read() -> list[UUID]:
            with translating(self.dsn):
                rows = await self.pool.fetch(_NOT_MINE, ids, self.owner)
            return [r["negotiation_id"] for r in rows]

        return await _until_done(read, "leases.check_failed")


async def _until_done(step: Callable[[], Awaitable[_T]], event: str) -> _T:
    """Retry `step` until it succeeds (the database is coming back): the keeper must
    never take its broker down with it. Logs each failure but the routine unavailable."""
    return await retrying(
        step, event=event, on=Exception, max_wait=1.0, quiet=(DatabaseUnavailable,)
    )
