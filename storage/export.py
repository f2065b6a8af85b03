"""Export a stream to JSON Lines for archiving, and import such a file into a log.

One JSON object per line, one line per event, in seq order:

    {"stream_id": "...", "seq": 1, "event_id": "...", "type": "negotiation.started",
     "recorded_at": "2026-01-01T12:00:00.123456+00:00", "prev_hash": "<hex>",
     "hash": "<hex>", "data": {...the event...}}

Import re-appends the events through an EventStore (which recomputes the chain), a batch
of whole streams per transaction, refusing a file whose own chain does not verify and a
stream the target log holds with other events (one it holds with the same chain is
skipped, so an interrupted import can be run again); after appending it checks the
recomputed hashes equal the file's. `recorded_at` is kept in the
file for the record; the target log stamps its own commit time (so do the read models:
an imported run shows when it was imported).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import msgspec

from mams.storage.audit import check_chain
from mams.storage.errors import StorageError
from mams.storage.eventstore import EventStore
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


class ArchiveImportError(StorageError):
    """An export file that cannot be imported (malformed, broken chain, stream exists)."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ExportedEvent)


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
    out: list[StoredEvent] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = _decoder.decode(raw)
            out.append(
                StoredEvent(
                    rec.stream_id,
                    rec.seq,
                    rec.event_id,
                    rec.type,
                    bytes(rec.data),
                    rec.recorded_at,
                    bytes.fromhex(rec.prev_hash),
                    bytes.fromhex(rec.hash),
                )
            )
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise ArchiveImportError(f"{source} line {n}: not an exported event: {exc}") from exc
    return out


def by_stream(events: Sequence[StoredEvent]) -> dict[UUID, list[StoredEvent]]:
    """Events grouped by stream (first-seen order), each sorted by seq."""
    groups: dict[UUID, list[StoredEvent]] = {}
    for e in events:
        groups.setdefault(e.stream_id, []).append(e)
    return {sid: sorted(evs, key=lambda e: e.seq) for sid, evs in groups.items()}


# Streams per read when exporting, and events per transaction when importing.
EXPORT_CHUNK = 200
IMPORT_BATCH = 5000


async def export_streams(
    store: EventStore, ids: Sequence[UUID], *, chunk: int = EXPORT_CHUNK
) -> AsyncIterator[tuple[int, list[StoredEvent], bytes]]:
    """The export lines of the streams `ids`, a chunk of streams per read, in the order of
    `ids`: yields per chunk how many ids it covered, their events (none for a stream
    without any) and those events' lines."""
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        streams = await store.read_streams(part)
        events = [e for sid in part for e in streams.get(sid, [])]
        yield len(part), events, b"".join(export_lines(events))


@dataclass
class Imported:
    """What `import_events` did: events appended per stream, the streams the log already
    held with the very same chain (skipped), and every stream's head hash."""

    appended: dict[UUID, int] = field(default_factory=dict)
    identical: list[UUID] = field(default_factory=list)
    heads: dict[UUID, bytes] = field(default_factory=dict)


async def import_events(
    store: EventStore,
    events: Sequence[StoredEvent],
    *,
    before_append: Callable[[dict[UUID, list[StoredEvent]]], Awaitable[None]] | None = None,
    on_progress: Callable[[int, int], object] | None = None,
    batch: int = IMPORT_BATCH,
) -> Imported:
    """Append exported events into `store`.

    Refuses, before writing anything, a file whose chain does not verify, or a stream the
    store holds with other events. A stream it holds with exactly the file's chain is
    skipped (so an import stopped halfway can be run again). The rest is appended a batch
    of whole streams (up to `batch` events) per transaction, then read back: the
    recomputed chain must equal the file's. `before_append` gets the streams to append
    once every check passed, before the first append (to store what the read models need
    first, such as the streams' sessions); `on_progress(streams, events)` is called after
    each batch with the streams and events done so far.
    """
    streams = by_stream(events)
    if not streams:
        raise ArchiveImportError("nothing to import: the file holds no events")
    for sid, evs in streams.items():
        problems = check_chain(evs)
        if problems:
            p = problems[0]
            raise ArchiveImportError(
                f"stream {sid}: the file's chain is broken at seq {p.seq} ({p.check}): {p.why}"
            )
    result = Imported()
    ids = list(streams)
    for i in range(0, len(ids), EXPORT_CHUNK):
        part = ids[i : i + EXPORT_CHUNK]
        held = await store.read_streams(part)
        for sid in part:  # in the file's order
            stored = held.get(sid)
            if stored is None:
                continue
            if [e.hash for e in stored] != [e.hash for e in streams[sid]]:
                raise ArchiveImportError(
                    f"stream {sid} already has other events in this log (its chain differs "
                    "from the file's); import only into a log that does not hold it"
                )
            result.identical.append(sid)
            result.heads[sid] = stored[-1].hash
    todo = {sid: evs for sid, evs in streams.items() if sid not in result.heads}
    if todo and before_append is not None:
        await before_append(todo)
    done_streams, done_events = len(result.identical), 0
    for group in _batches(list(todo), todo, batch):
        await store.append(
            [
                NewEvent(e.stream_id, e.seq, e.event_id, e.type, e.data)
                for sid in group
                for e in todo[sid]
            ]
        )
        stored_now = await store.read_streams(group)
        for sid in group:
            if [e.hash for e in stored_now.get(sid, [])] != [e.hash for e in todo[sid]]:
                raise ArchiveImportError(
                    f"stream {sid}: the imported chain differs from the file's (hashes differ)"
                )
            result.appended[sid] = len(todo[sid])
            result.heads[sid] = todo[sid][-1].hash
        done_streams += len(group)
        done_events += sum(len(todo[sid]) for sid in group)
        if on_progress is not None:
            on_progress(done_streams, done_events)
    return result


def _batches(
    ids: list[UUID], streams: dict[UUID, list[StoredEvent]], size: int
) -> Iterator[list[UUID]]:
    """Whole streams grouped up to `size` events (a longer stream goes alone)."""
    group: list[UUID] = []
    events = 0
    for sid in ids:
        n = len(streams[sid])
        if group and events + n > size:
            yield group
            group, events = [], 0
        group.append(sid)
        events += n
    if group:
        yield group
