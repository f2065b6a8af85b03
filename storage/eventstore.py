"""The event store contract and its two implementations: in memory and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable
from uuid import UUID

import asyncpg
import msgspec

from mams.storage.chain import GENESIS, link_hash
from mams.storage.errors import ConcurrencyError, StorageError, translate, translating
from mams.storage.model import NewEvent, StoredEvent


class EventStore(Protocol):
    """An append-only log of event streams.

    `append` is atomic (all or nothing), durable when it returns, and idempotent by
    `event_id`: an event whose id is already stored is skipped silently, even within one
    batch. A different event at a taken `(stream_id, seq)` raises ConcurrencyError.
    """

    async def append(self, events: Sequence[NewEvent]) -> None:
        """Append `events` atomically; skip ones already stored (same event_id)."""
        ...

    async def read(self, stream_id: UUID, *, after_seq: int = 0) -> list[StoredEvent]:
        """Events of `stream_id` with seq > `after_seq`, ordered by seq."""
        ...

    async def stream_ids(self) -> list[UUID]:
        """Every stream holding at least one event, in order of first append."""
        ...

    async def read_streams(
        self, stream_ids: Sequence[UUID], *, types: Sequence[str] | None = None
    ) -> dict[UUID, list[StoredEvent]]:
        """The events of several streams at once (only those of `types`, if given), each
        stream's in seq order; streams without such events are absent."""
        ...

    async def last_seq(self, stream_id: UUID) -> int:
        """The highest seq in `stream_id`, or 0 if the stream is empty."""
        ...


class PreparedAppend(msgspec.Struct, frozen=True):
    """A batch ready to commit: deduplicated events, their chain links, read-model rows."""

    batch: list[NewEvent]
    links: list[tuple[bytes, bytes]]
    models: bytes | None


# mams_append's SQLSTATE when a stream's first link in the batch does not continue the
# stored chain (migration 0005; `mams_append` is defined now by migration 0010).
_STALE_CHAIN = "MA001"


class _StaleChainError(Exception):
    """The batch was chained from hashes that are not the stored ones."""


@runtime_checkable
class PipelinedStore(EventStore, Protocol):
    """An EventStore whose append comes in two steps, so a writer can prepare its next
    batch while the previous one commits (`append` is `prepare` then `commit`)."""

    async def prepare(self, events: Sequence[NewEvent]) -> PreparedAppend | None:
        """Dedupe, chain and project `events` now; None if there is nothing to append."""
        ...

    async def commit(self, prepared: PreparedAppend) -> None:
        """Commit a prepared batch; batches commit in the order they were prepared."""
        ...


class Projector(Protocol):
    """Computes read-model rows for a batch; the store writes them with the events."""

    async def rows(
        self,
        events: Sequence[NewEvent],
        read_first: Callable[[Sequence[UUID]], Awaitable[Mapping[UUID, bytes]]],
    ) -> bytes | None:
        """The read-model rows of `events` as the JSON document `mams_append` takes
        (migration 0010); None writes no read models at all. The store writes the rows of
        only those events it actually inserts, in the same statement as the events.
        `read_first(stream_ids)` gives the data of those streams' first events (a room's
        opening, for rooms the batch does not open), absent streams left out."""
        ...


def _dedupe(events: Sequence[NewEvent]) -> list[NewEvent]:
    """Drop repeated event_ids (first wins) and reject batches that fight over a seq.

    Both stores call this, so in-memory and PostgreSQL agree on what a batch means.
    """
    seen_ids: set[UUID] = set()
    taken: dict[tuple[UUID, int], UUID] = {}
    unique: list[NewEvent] = []
    for event in events:
        if event.seq < 1:
            raise StorageError(
                f"event {event.event_id} has seq {event.seq}; seqs start at 1 in every stream"
            )
        if event.event_id in seen_ids:
            continue
        key = (event.stream_id, event.seq)
        if key in taken:
            raise ConcurrencyError(event.stream_id, event.seq)
        seen_ids.add(event.event_id)
        taken[key] = event.event_id
        unique.append(event)
    return unique


Key = tuple[UUID, int]


def _chain(
    batch: Sequence[NewEvent], stored: Mapping[Key, bytes | None]
) -> list[tuple[bytes, bytes]]:
    """(prev_hash, hash) for each event of `batch`, in batch order.

    The previous hash of an event is the stored hash at `(stream_id, seq - 1)` if the log
    has that row, else the hash just computed for that seq within the batch, else 32 zero
    bytes (the first event of a stream; also a gap or a pre-chain row, which audit flags).
    """
    links = _chain_in_order(batch, stored)
    if links is not None:
        return links
    # Some stream's seqs go down within the batch: chain in seq order, answer in batch order.
    order = sorted(range(len(batch)), key=lambda i: batch[i].seq)
    by_seq = _chain_in_order([batch[i] for i in order], stored)
    assert by_seq is not None
    out: list[tuple[bytes, bytes]] = [by_seq[0]] * len(batch)
    for j, i in enumerate(order):
        out[i] = by_seq[j]
    return out


def _chain_in_order(
    batch: Sequence[NewEvent], stored: Mapping[Key, bytes | None]
) -> list[tuple[bytes, bytes]] | None:
    # One pass in batch order (the broker's batches ascend per stream), remembering each
    # stream's last computed (seq, hash); None if some stream's seq goes down.
    last: dict[UUID, tuple[int, bytes]] = {}
    links: list[tuple[bytes, bytes]] = []
    for event in batch:
        sid, seq = event.stream_id, event.seq
        mine = last.get(sid)
        if mine is not None and mine[0] > seq:
            return None
        prev = stored.get((sid, seq - 1)) if stored else None
        if not prev:
            prev = mine[1] if mine is not None and mine[0] == seq - 1 else GENESIS
        own = link_hash(prev, sid, seq, event.event_id, event.type, event.data)
        last[sid] = (seq, own)
        links.append((prev, own))
    return links


def _previous_keys(batch: Sequence[NewEvent]) -> list[Key]:
    return list(dict.fromkeys((e.stream_id, e.seq - 1) for e in batch if e.seq > 1))


STREAMS_PER_READ = 200  # ~20,000 events of 100-event negotiations a query


async def read_in_chunks(
    store: EventStore, ids: Sequence[UUID], *, chunk: int = STREAMS_PER_READ
) -> AsyncIterator[list[tuple[UUID, list[StoredEvent]]]]:
    """The streams `ids`, `chunk` of them to a query (`read_streams`), in the order of
    `ids`: per chunk, each id with its events (none for a stream without any)."""
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        streams = await store.read_streams(part)
        yield [(sid, streams.get(sid, [])) for sid in part]


class InMemoryEventStore:
    """An EventStore in a dict, for unit tests and dry runs. Same contract as PostgreSQL."""

    def __init__(self) -> None:
        self._streams: dict[UUID, dict[int, StoredEvent]] = {}
        self._ids: set[UUID] = set()

    async def append(self, events: Sequence[NewEvent]) -> None:
        """Append `events` atomically; skip ones already stored (same event_id)."""
        fresh = [e for e in _dedupe(events) if e.event_id not in self._ids]
        for event in fresh:
            if event.seq in self._streams.get(event.stream_id, {}):
                raise ConcurrencyError(event.stream_id, event.seq)
            try:
                msgspec.json.decode(event.data)
            except msgspec.DecodeError as exc:
                raise StorageError(f"event {event.event_id} data is not valid JSON: {exc}") from exc
        # Nothing awaits between the checks and here, so the batch lands all at once.
        now = datetime.now(UTC)
        known = {
            key: self._streams[key[0]][key[1]].hash
            for key in _previous_keys(fresh)
            if key[1] in self._streams.get(key[0], {})
        }
        for event, (prev, own) in zip(fresh, _chain(fresh, known), strict=True):
            stored = StoredEvent(
                event.stream_id, event.seq, event.event_id, event.type, event.data, now, prev, own
            )
            self._streams.setdefault(event.stream_id, {})[event.seq] = stored
            self._ids.add(event.event_id)

    async def read(self, stream_id: UUID, *, after_seq: int = 0) -> list[StoredEvent]:
        """Events of `stream_id` with seq > `after_seq`, ordered by seq."""
        stream = self._streams.get(stream_id, {})
        return [stream[seq] for seq in sorted(stream) if seq > after_seq]

    async def stream_ids(self) -> list[UUID]:
        """Every stream holding at least one event, in order of first append."""
        return list(self._streams)

    async def read_streams(
        self, stream_ids: Sequence[UUID], *, types: Sequence[str] | None = None
    ) -> dict[UUID, list[StoredEvent]]:
        """The events of several streams at once (only those of `types`, if given), each
        stream's in seq order; streams without such events are absent."""
        out: dict[UUID, list[StoredEvent]] = {}
        for sid in stream_ids:
            stream = self._streams.get(sid, {})
            got = [stream[q] for q in sorted(stream) if types is None or stream[q].type in types]
            if got:
                out[sid] = got
        return out

    async def last_seq(self, stream_id: UUID) -> int:
        """The highest seq in `stream_id`, or 0 if the stream is empty."""
        return max(self._streams.get(stream_id, {}), default=0)


# One round trip per batch: `mams_append` (migration 0010) inserts the events (ON CONFLICT
# makes re-appends no-ops) and the projector's read-model rows of those it inserted, in one
# implicit transaction. It returns NULL when every event was new, else the inserted ids.
_APPEND = "SELECT mams_append($1, $2, $3, $4, $5, $6, $7, $8)"

# The stored hashes the batch chains from: one round trip, in the append's transaction.
_PREVIOUS = """
SELECT e.stream_id, e.seq, e.hash
FROM events e
JOIN unnest($1::uuid[], $2::int4[]) AS p(stream_id, seq)
  ON e.stream_id = p.stream_id AND e.seq = p.seq
"""

# The first event of each of some streams (a room's opening), for the projector.
_FIRST = "SELECT stream_id, data FROM events WHERE stream_id = ANY ($1::uuid[]) AND seq = 1"

_FIND_TAKEN = """
SELECT e.stream_id, e.seq
FROM events e
JOIN unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(stream_id, seq, event_id)
  ON e.stream_id = b.stream_id AND e.seq = b.seq AND e.event_id <> b.event_id
ORDER BY e.global_pos
LIMIT 1
"""

_READ = """
SELECT stream_id, seq, event_id, type, data, recorded_at, prev_hash, hash
FROM events WHERE stream_id = $1 AND seq > $2 ORDER BY seq
"""
_READ_MANY = """
SELECT stream_id, seq, event_id, type, data, recorded_at, prev_hash, hash
FROM events WHERE stream_id = ANY ($1::uuid[]) AND ($2::text[] IS NULL OR type = ANY ($2))
ORDER BY stream_id, seq
"""


def _stored(r: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        r["stream_id"],
        r["seq"],
        r["event_id"],
        r["type"],
        r["data"],
        r["recorded_at"],
        r["prev_hash"] or b"",
        r["hash"] or b"",
    )


# How many streams' last hashes a store remembers (about 100 bytes each).
CHAIN_CACHE_STREAMS = 100_000


class PostgresEventStore:
    """An EventStore on PostgreSQL (the `events` table of migration 0001).

    The pool's connections must carry the jsonb codec of `mams.storage.pg` (use
    `create_pool`), so event data travels as bytes with no re-encoding.

    The store remembers the hash of the last row it inserted (and saw committed) in each
    of the most recent `CHAIN_CACHE_STREAMS` streams, and of the last row of each batch it
    prepared and has not yet committed: a batch that continues those streams chains from
    memory, without reading the previous hashes back. Any other previous row is read
    before the append (rows are immutable); `mams_append` checks each stream's first link
    against the stored row, so a stale memory is never written.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        projector: Projector | None = None,
        *,
        dsn: str | None = None,
    ) -> None:
        self._pool = pool
        self._projector = projector
        self._dsn = dsn  # only to name the server in DatabaseUnavailable
        self._last: dict[UUID, tuple[int, bytes]] = {}  # stream -> (seq, hash) we inserted
        self._tip: dict[UUID, tuple[int, bytes]] = {}  # the same, prepared, not committed

    async def append(self, events: Sequence[NewEvent]) -> None:
        """Append `events` and their read-model rows in one statement (after reading the
        hashes the batch chains from, unless remembered)."""
        prepared = await self.prepare(events)
        if prepared is not None:
            await self.commit(prepared)

    async def prepare(self, events: Sequence[NewEvent]) -> PreparedAppend | None:
        """Do the client-side work of an append now (dedupe, hash chain, read-model rows),
        so it can overlap the commit of the batch before; None if `events` is empty.

        A batch prepared while the one before it in its streams is still committing chains
        from that batch's hashes. `commit` has the database check each stream's first link
        against the stored row before it, and prepares again if it does not match (that
        batch failed, or another writer got there first).
        """
        batch = _dedupe(events)
        if not batch:
            return None
        # Only each stream's first event here needs the hash before it; the rest chain
        # from the batch itself.
        first: dict[UUID, int] = {}
        for event in batch:
            seen = first.get(event.stream_id)
            if seen is None or event.seq < seen:
                first[event.stream_id] = event.seq
        known: dict[Key, bytes | None] = {}
        previous: list[Key] = []
        tip, last = self._tip, self._last
        for sid, seq in first.items():
            if seq == 1:
                continue
            ahead, done = tip.get(sid), last.get(sid)
            if ahead is not None and ahead[0] == seq - 1:
                known[sid, seq - 1] = ahead[1]
            elif done is not None and done[0] == seq - 1:
                known[sid, seq - 1] = done[1]
            else:
                previous.append((sid, seq - 1))
        if previous:
            # Rows are immutable, so reading them outside the append's transaction is as
            # good as inside it.
            with translating(self._dsn):
                found = await self._pool.fetch(
                    _PREVIOUS, [k[0] for k in previous], [k[1] for k in previous]
                )
            known.update({(r["stream_id"], r["seq"]): r["hash"] for r in found})
        try:
            links = _chain(batch, known)
        except msgspec.DecodeError as exc:
            raise StorageError(f"event data is not valid JSON: {exc}") from exc
        models = None
        if self._projector is not None:  # before the tips move: it may read, and fail
            models = await self._projector.rows(batch, self._first_events)
        for event, (_, own) in zip(batch, links, strict=True):
            ahead = tip.get(event.stream_id)
            if ahead is None or event.seq > ahead[0]:
                tip[event.stream_id] = (event.seq, own)
        return PreparedAppend(batch, links, models)

    async def _first_events(self, stream_ids: Sequence[UUID]) -> dict[UUID, bytes]:
        # Only for a batch's messages in rooms the projector does not remember (after a
        # restart): a round trip of its own, once per such room.
        with translating(self._dsn):
            rows = await self._pool.fetch(_FIRST, list(stream_ids))
        return {r["stream_id"]: r["data"] for r in rows}

    async def commit(self, prepared: PreparedAppend) -> None:
        """Commit a batch from `prepare`: events and read-model rows in one statement."""
        try:
            try:
                some = await self._commit(prepared)
            except _StaleChainError:
                # What the batch chained from is not what is stored: chain from the log.
                for event in prepared.batch:
                    self._last.pop(event.stream_id, None)
                    self._tip.pop(event.stream_id, None)
                again = await self.prepare(prepared.batch)
                assert again is not None
                prepared = again
                some = await self._commit(prepared)
        except BaseException:
            self._tip.clear()  # batches prepared on top of this one will not match
            raise
        self._remember(prepared.batch, prepared.links, None if some is None else set(some))

    async def _commit(self, prepared: PreparedAppend) -> list[UUID] | None:
        batch, links = prepared.batch, prepared.links
        columns: tuple[list[UUID], list[int], list[UUID], list[str], list[bytes]] = (
            [e.stream_id for e in batch],
            [e.seq for e in batch],
            [e.event_id for e in batch],
            [e.type for e in batch],
            [e.data for e in batch],
        )
        with translating(self._dsn):
            async with self._pool.acquire() as conn:
                try:
                    some: list[UUID] | None = await conn.fetchval(
                        _APPEND,
                        *columns,
                        [prev for prev, _ in links],
                        [own for _, own in links],
                        prepared.models,
                    )
                    return some
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate == _STALE_CHAIN:
                        raise _StaleChainError from exc
                    if not isinstance(exc, asyncpg.UniqueViolationError):
                        raise
                    mapped = translate(exc, dsn=self._dsn)
                    if mapped is not None:
                        raise mapped from exc
                    if exc.constraint_name != "events_pkey":
                        raise
                    # The server did not name the key; look it up (the call rolled back).
                    taken = await conn.fetchrow(_FIND_TAKEN, *columns[:3])
                    if taken is None:
                        raise
                    raise ConcurrencyError(taken["stream_id"], taken["seq"]) from exc

    def _remember(
        self,
        batch: Sequence[NewEvent],
        links: Sequence[tuple[bytes, bytes]],
        inserted: set[UUID] | None,
    ) -> None:
        # Called once the append committed; only rows it inserted (None: all) count (a
        # skipped duplicate's stored hash is whatever its first append computed).
        last, tip = self._last, self._tip
        for event, (_, own) in zip(batch, links, strict=True):
            if inserted is not None and event.event_id not in inserted:
                continue
            if tip.get(event.stream_id) == (event.seq, own):
                del tip[event.stream_id]  # committed: the tip is the last row now
            seen = last.pop(event.stream_id, None)
            last[event.stream_id] = (
                (event.seq, own) if seen is None or event.seq > seen[0] else seen
            )
        while len(last) > CHAIN_CACHE_STREAMS:
            del last[next(iter(last))]

    async def read(self, stream_id: UUID, *, after_seq: int = 0) -> list[StoredEvent]:
        """Events of `stream_id` with seq > `after_seq`, ordered by seq."""
        with translating(self._dsn):
            rows = await self._pool.fetch(_READ, stream_id, after_seq)
        return [_stored(r) for r in rows]

    async def read_streams(
        self, stream_ids: Sequence[UUID], *, types: Sequence[str] | None = None
    ) -> dict[UUID, list[StoredEvent]]:
        """The events of several streams at once (only those of `types`, if given), each
        stream's in seq order; streams without such events are absent. One round trip."""
        with translating(self._dsn):
            rows = await self._pool.fetch(_READ_MANY, list(stream_ids), types)
        out: dict[UUID, list[StoredEvent]] = {}
        for r in rows:
            out.setdefault(r["stream_id"], []).append(_stored(r))
        return out

    async def stream_ids(self) -> list[UUID]:
        """Every stream holding at least one event, in order of first append."""
        with translating(self._dsn):
            rows = await self._pool.fetch(
                "SELECT stream_id FROM events GROUP BY stream_id ORDER BY min(global_pos)"
            )
        return [r["stream_id"] for r in rows]

    async def last_seq(self, stream_id: UUID) -> int:
        """The highest seq in `stream_id`, or 0 if the stream is empty."""
        with translating(self._dsn):
            value = await self._pool.fetchval(
                "SELECT coalesce(max(seq), 0) FROM events WHERE stream_id = $1", stream_id
            )
        return int(value)
