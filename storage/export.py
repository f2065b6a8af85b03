"""Export a stream to JSON Lines for archiving, and import such a file into a log.

One JSON object per line, one line per event, in seq order:

    {"stream_id": "...", "seq": 1, "event_id": "...", "type": "negotiation.started",
     "recorded_at": "2026-01-01T12:00:00.123456+00:00", "prev_hash": "<hex>",
     "hash": "<hex>", "data": {...the event...}}

A file may also hold, before the events, one line per session of its rooms, as stored
(`export_session_line`):

    {"session_id": "...", "name": "...", "created_at": "...", "scenario": {...}}

Import (`Archive`) reads a file twice, a line at a time, so it never holds it whole: the
first pass checks every stream's chain, the second re-appends the events through an
EventStore (which recomputes the chain), a batch of whole streams per transaction, reading
the next batch in a worker thread while up to two commit. It
refuses a file whose own chain does not verify and a stream the target log holds with
other events, before writing anything (one it holds with the same head is skipped, so an
interrupted import can be run again); after appending it checks the recomputed hashes
equal the file's. An import keeps the file's times: `after_append` (the CLI's
`mams.audit.restamp`) sets each appended event's `recorded_at`, and the read models' times
derived from them, to the file's; and a session the file carries is stored with its own
name, time and scenario.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import anyio
import anyio.to_thread
import asyncpg
import msgspec

from mams.storage.audit import check_link
from mams.storage.chain import GENESIS
from mams.storage.errors import StorageError, translating
from mams.storage.eventstore import EventStore, read_in_chunks
from mams.storage.model import NewEvent, StoredEvent


class ExportedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One line of an export file."""

    stream_id: UUID
    seq: int
    event_id: UUID
    type: str
    recorded_at: datetime
    prev_hash: str
    hash: str
    data: msgspec.Raw


class ExportedSession(msgspec.Struct, frozen=True, kw_only=True):
    """A line of an export file holding one session of its rooms, as the log stored it."""

    session_id: UUID
    name: str | None
    created_at: datetime
    scenario: msgspec.Raw


Record = StoredEvent | ExportedSession


class ArchiveImportError(StorageError):
    """An export file that cannot be imported (malformed, broken chain, stream exists)."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ExportedEvent)
_session_decoder = msgspec.json.Decoder(ExportedSession)


def export_session_line(
    session_id: UUID, name: str | None, created_at: datetime, scenario: bytes
) -> bytes:
    """A session as one JSON line (ending in a newline); `scenario` is its JSON."""
    line = ExportedSession(
        session_id=session_id, name=name, created_at=created_at, scenario=msgspec.Raw(scenario)
    )
    return _encoder.encode(line) + b"\n"


def export_lines(events: Iterable[StoredEvent]) -> Iterator[bytes]:
    """Each event as one JSON line (ending in a newline)."""
    for e in events:
        line = ExportedEvent(
            stream_id=e.stream_id,
            seq=e.seq,
            event_id=e.event_id,
            type=e.type,
            recorded_at=e.recorded_at,
            prev_hash=e.prev_hash.hex(),
            hash=e.hash.hex(),
            data=msgspec.Raw(e.data),
        )
        yield _encoder.encode(line) + b"\n"


def parse_lines(lines: Iterable[bytes | str], *, source: str = "input") -> list[StoredEvent]:
    """The events of an export file; blank lines are skipped."""
    return list(iter_events(lines, source=source))


def iter_events(lines: Iterable[bytes | str], *, source: str = "input") -> Iterator[StoredEvent]:
    """The events of an export file, one line at a time; blank and session lines are
    skipped."""
    return (r for r in iter_records(lines, source=source) if isinstance(r, StoredEvent))


def iter_records(lines: Iterable[bytes | str], *, source: str = "input") -> Iterator[Record]:
    """The events and sessions of an export file, one line at a time; blank lines are
    skipped."""
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            try:
                rec = _decoder.decode(raw)
            except msgspec.ValidationError:
                try:  # rare: a session line
                    yield _session_decoder.decode(raw)
                    continue
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
                raise
            yield StoredEvent(
                rec.stream_id,
                rec.seq,
                rec.event_id,
                rec.type,
                bytes(rec.data),
                rec.recorded_at,
                bytes.fromhex(rec.prev_hash),
                bytes.fromhex(rec.hash),
            )
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise ArchiveImportError(f"{source} line {n}: not an exported event: {exc}") from exc


# Streams per read when exporting, and events per transaction when importing.
EXPORT_CHUNK = 200
IMPORT_BATCH = 5000


async def export_streams(
    store: EventStore, ids: Sequence[UUID], *, chunk: int = EXPORT_CHUNK
) -> AsyncIterator[tuple[int, list[StoredEvent], bytes]]:
    """The export lines of the streams `ids`, a chunk of streams per read, in the order of
    `ids`: yields per chunk how many ids it covered, their events (none for a stream
    without any) and those events' lines."""
    async for streams in read_in_chunks(store, ids, chunk=chunk):
        events = [e for _, stream in streams for e in stream]
        yield len(streams), events, b"".join(export_lines(events))


@dataclass
class Imported:
    """What `import_events` did: events appended per stream, the streams the log already
    held with the very same chain (skipped), and every stream's head hash."""

    appended: dict[UUID, int] = field(default_factory=dict)
    identical: list[UUID] = field(default_factory=list)
    heads: dict[UUID, bytes] = field(default_factory=dict)


@dataclass
class _Stream:
    """What the first pass keeps of one stream: its first event, how many, its head."""

    first: StoredEvent
    events: int
    head: bytes


class Archive:
    """An export file read twice, a line at a time, never held whole: `scan` checks every
    stream's chain and keeps a few facts per stream; `import_scanned` appends.

    `open_events` gives the file's events afresh on each call (`iter_events` over the
    file's lines). Each stream's lines must be in seq order, as `mams export` writes them;
    streams may interleave."""

    def __init__(self, open_events: Callable[[], Iterable[Record]]) -> None:
        self._open = open_events
        self.streams: dict[UUID, _Stream] = {}
        self.sessions: dict[UUID, ExportedSession] = {}  # the session lines

    def scan(self) -> None:
        """Check the chain of every stream of the file (raises ArchiveImportError at the
        first broken link) and count its events."""
        streams: dict[UUID, _Stream] = {}
        sessions: dict[UUID, ExportedSession] = {}
        for e in self._open():
            if isinstance(e, ExportedSession):
                sessions[e.session_id] = e
                continue
            known = streams.get(e.stream_id)
            expected = 1 if known is None else known.first.seq + known.events
            prev = GENESIS if known is None else known.head
            if e.seq != expected:
                raise ArchiveImportError(
                    f"stream {e.stream_id}: the file's chain is broken at seq {e.seq} (seq): "
                    f"seq {expected} should come next; a stream's lines must be complete "
                    "and in seq order, as `mams export` writes them"
                )
            problems = check_link(e, prev)
            if problems:
                p = problems[0]
                raise ArchiveImportError(
                    f"stream {e.stream_id}: the file's chain is broken at seq {p.seq} "
                    f"({p.check}): {p.why}"
                )
            if known is None:
                streams[e.stream_id] = _Stream(first=e, events=1, head=e.hash)
            else:
                known.events += 1
                known.head = e.hash
        if not streams:
            raise ArchiveImportError("nothing to import: the file holds no events")
        self.streams = streams
        self.sessions = sessions

    def events(self, wanted: Collection[UUID]) -> Iterator[StoredEvent]:
        """The file's events of the streams `wanted`, read again."""
        return (e for e in self._open() if isinstance(e, StoredEvent) and e.stream_id in wanted)


async def import_events(
    store: EventStore,
    events: Sequence[StoredEvent],
    *,
    before_append: Callable[[dict[UUID, StoredEvent]], Awaitable[None]] | None = None,
    on_progress: Callable[[int, int], object] | None = None,
    batch: int = IMPORT_BATCH,
) -> Imported:
    """`import_scanned` of events already in memory (each stream's in seq order)."""
    archive = Archive(lambda: events)
    archive.scan()
    return await import_scanned(
        store, archive, before_append=before_append, on_progress=on_progress, batch=batch
    )


async def import_scanned(
    store: EventStore,
    archive: Archive,
    *,
    before_append: Callable[[dict[UUID, StoredEvent]], Awaitable[None]] | None = None,
    after_append: Callable[[list[list[StoredEvent]]], Awaitable[None]] | None = None,
    on_progress: Callable[[int, int], object] | None = None,
    batch: int = IMPORT_BATCH,
) -> Imported:
    """Append a scanned archive's streams into `store`.

    Refuses, before writing anything, a stream the store holds with other events. A
    stream it holds with exactly the file's chain is skipped (so an import stopped
    halfway can be run again). The rest is appended a batch of whole streams (up to
    `batch` events) per transaction, then read back: the recomputed chain must equal the
    file's. `before_append` gets the first event of each stream to append once every
    check passed, before the first append (to store what the read models need first,
    such as the streams' sessions); `after_append` gets each batch of whole streams (the
    file's events) once appended and verified (to keep the file's times);
    `on_progress(streams, events)` is called after each batch with the streams and
    events done so far.
    """
    streams = archive.streams
    result = Imported()
    ids = list(streams)
    async for part in read_in_chunks(store, ids, chunk=EXPORT_CHUNK):
        for sid, stored in part:  # in the file's order
            if not stored:
                continue
            if len(stored) != streams[sid].events or stored[-1].hash != streams[sid].head:
                raise ArchiveImportError(
                    f"stream {sid} already has other events in this log (its chain differs "
                    "from the file's); import only into a log that does not hold it"
                )
            result.identical.append(sid)
            result.heads[sid] = stored[-1].hash
    todo = {sid: info for sid, info in streams.items() if sid not in result.heads}
    if todo and before_append is not None:
        await before_append({sid: info.first for sid, info in todo.items()})
    if not todo:
        return result  # no need to read the file again
    done = [len(result.identical), 0]  # streams, events

    async def commit(group: list[list[StoredEvent]], slots: anyio.Semaphore) -> None:
        try:
            await _append_verified(store, group, result)
            if after_append is not None:
                await after_append(group)
        finally:
            slots.release()
        done[0] += len(group)
        done[1] += sum(len(evs) for evs in group)
        if on_progress is not None:
            on_progress(done[0], done[1])

    # The file is read in a worker thread while up to two batches commit, so reading,
    # the store's hashing and the database's work overlap.
    groups = _whole_streams(archive.events(todo), todo, batch)
    try:
        async with anyio.create_task_group() as tg:
            slots = anyio.Semaphore(2)
            while (group := await anyio.to_thread.run_sync(next, groups, None)) is not None:
                await slots.acquire()
                tg.start_soon(commit, group, slots)
    except BaseExceptionGroup as group_error:  # a batch failed: its own error, as itself
        raise group_error.exceptions[0] from None
    result.appended = {sid: result.appended[sid] for sid in todo if sid in result.appended}
    return result


def _whole_streams(
    events: Iterable[StoredEvent], todo: Mapping[UUID, _Stream], size: int
) -> Iterator[list[list[StoredEvent]]]:
    """`events` gathered into whole streams, and those into groups of up to `size` events
    (a longer stream goes alone)."""
    pending: dict[UUID, list[StoredEvent]] = {}  # streams still being read
    ready: list[list[StoredEvent]] = []
    ready_events = 0
    for e in events:
        evs = pending.setdefault(e.stream_id, [])
        evs.append(e)
        if len(evs) == todo[e.stream_id].events:  # the stream is whole
            del pending[e.stream_id]
            if ready and ready_events + len(evs) > size:
                yield ready
                ready, ready_events = [], 0
            ready.append(evs)
            ready_events += len(evs)
    if pending:  # the first pass counted other lines than this one read
        raise ArchiveImportError(
            f"the file changed while it was being imported (stream {next(iter(pending))} "
            "is not what the first reading saw); import it again"
        )
    if ready:
        yield ready


async def _append_verified(
    store: EventStore, streams: list[list[StoredEvent]], result: Imported
) -> None:
    """Append whole streams in one transaction; their stored chains must be the file's."""
    await store.append(
        [NewEvent(e.stream_id, e.seq, e.event_id, e.type, e.data) for evs in streams for e in evs]
    )
    stored = await store.read_streams([evs[0].stream_id for evs in streams])
    for evs in streams:
        sid = evs[0].stream_id
        if [e.hash for e in stored.get(sid, [])] != [e.hash for e in evs]:
            raise ArchiveImportError(
                f"stream {sid}: the imported chain differs from the file's (hashes differ)"
            )
        result.appended[sid] = len(evs)
        result.heads[sid] = evs[-1].hash


async def restamp(pool: asyncpg.Pool, streams: list[list[StoredEvent]]) -> None:
    """Give appended streams the times of the file they came from: each event's
    `recorded_at`, and what the read models derive from it (a run's start and end, its
    messages' and outcome's times), which the append stamped with the time of the import.
    (Not part of the chain: the hashes do not cover the times.)"""
    events = [e for stream in streams for e in stream]
    ids = [stream[0].stream_id for stream in streams]
    with translating():
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE events e SET recorded_at = x.at FROM unnest($1::uuid[], $2::int4[], "
                "$3::timestamptz[]) AS x(stream_id, seq, at) "
                "WHERE e.stream_id = x.stream_id AND e.seq = x.seq",
                [e.stream_id for e in events],
                [e.seq for e in events],
                [e.recorded_at for e in events],
            )
            await conn.execute(
                "UPDATE negotiation_runs r SET started_at = e.recorded_at FROM events e "
                "WHERE r.negotiation_id = ANY($1::uuid[]) AND e.stream_id = r.negotiation_id "
                "AND e.seq = 1",
                ids,
            )
            await conn.execute(
                "UPDATE negotiation_runs r SET ended_at = e.recorded_at FROM events e "
                "WHERE r.negotiation_id = ANY($1::uuid[]) AND e.stream_id = r.negotiation_id "
                "AND e.type = 'negotiation.ended'",
                ids,
            )
            await conn.execute(
                "UPDATE outcomes o SET decided_at = e.recorded_at FROM events e "
                "WHERE o.negotiation_id = ANY($1::uuid[]) AND e.stream_id = o.negotiation_id "
                "AND e.type = 'negotiation.ended'",
                ids,
            )
            await conn.execute(
                "UPDATE messages m SET sent_at = e.recorded_at FROM events e "
                "WHERE m.negotiation_id = ANY($1::uuid[]) AND e.stream_id = m.negotiation_id "
                "AND e.seq = m.seq",
                ids,
            )
