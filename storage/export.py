"""Export a stream to JSON Lines for archiving, and import such a file into a log.

One JSON object per line, one line per event, in seq order:

    {"stream_id": "...", "seq": 1, "event_id": "...", "type": "negotiation.started",
     "recorded_at": "2026-01-01T12:00:00.123456+00:00", "prev_hash": "<hex>",
     "hash": "<hex>", "data": {...the event...}}

Import re-appends the events through an EventStore (which recomputes the chain), refusing
a file whose own chain does not verify and a stream the target log already holds; after
appending it checks the recomputed hashes equal the file's. `recorded_at` is kept in the
file for the record; the target log stamps its own commit time (so do the read models:
an imported run shows when it was imported).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
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


async def import_events(
    store: EventStore,
    events: Sequence[StoredEvent],
    *,
    before_append: Callable[[dict[UUID, list[StoredEvent]]], Awaitable[None]] | None = None,
) -> dict[UUID, int]:
    """Append exported events into `store`; return events imported per stream.

    Refuses (before writing anything) a file whose chain does not verify or a stream the
    store already holds; each stream is appended in one batch (one transaction).
    `before_append` gets the streams once every check passed, before the first append
    (to store what the read models need first, such as the streams' sessions).
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
        if await store.last_seq(sid) != 0:
            raise ArchiveImportError(
                f"stream {sid} already has events in this log; import only into a log "
                "that does not hold it"
            )
    if before_append is not None:
        await before_append(streams)
    counts: dict[UUID, int] = {}
    for sid, evs in streams.items():
        await store.append([NewEvent(e.stream_id, e.seq, e.event_id, e.type, e.data) for e in evs])
        stored = await store.read(sid)
        if [e.hash for e in stored] != [e.hash for e in evs]:
            raise ArchiveImportError(
                f"stream {sid}: the imported chain differs from the file's (hashes differ)"
            )
        counts[sid] = len(evs)
    return counts
