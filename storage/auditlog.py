"""Auditing a whole log: streams read a chunk at a time, checked in worker processes.

`audit_stream` (`mams.storage.audit`) is pure and CPU-bound: on one core it checks about
40,000 events a second, so a log of ten million events would take four minutes. Here the
streams are split into chunks of `CHUNK` streams; each chunk is read in one query and
audited, by `jobs` worker processes side by side (`mams.storage.parallel`), or in this
process with `jobs=1`. Reports come back in the order of the ids given, a chunk at a
time, so a caller can show progress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from uuid import UUID

import msgspec

from mams.storage.audit import Pin, StreamReport, audit_stream
from mams.storage.eventstore import EventStore
from mams.storage.parallel import CHUNK, PARALLEL_FROM, default_jobs, map_streams

__all__ = ["CHUNK", "audit_chunk", "audit_log", "default_jobs"]


async def audit_chunk(
    store: EventStore,
    ids: Sequence[UUID],
    *,
    finished: Collection[UUID] = (),
    recorded: Collection[UUID] = (),
    pins: Mapping[UUID, Pin] | None = None,
) -> list[StreamReport]:
    """Read `ids` in one query and audit each (`audit_stream`), in the order given."""
    streams = await store.read_streams(ids)
    pins = pins or {}
    return [
        audit_stream(
            sid,
            streams.get(sid, []),
            expect_ended=sid in finished,
            recorded=sid in recorded,
            pinned=pins.get(sid),
        )
        for sid in ids
    ]


class _Facts(msgspec.Struct, frozen=True):
    """What the log's other records say about one chunk's streams."""

    finished: frozenset[UUID]
    recorded: frozenset[UUID]
    pins: dict[UUID, Pin]


async def _audit_part(store: EventStore, ids: list[UUID], facts: _Facts) -> list[StreamReport]:
    return await audit_chunk(
        store, ids, finished=facts.finished, recorded=facts.recorded, pins=facts.pins
    )


async def audit_log(
    store: EventStore,
    ids: Sequence[UUID],
    *,
    dsn: str = "",
    jobs: int = 1,
    finished: Collection[UUID] = (),
    recorded: Collection[UUID] = (),
    pins: Mapping[UUID, Pin] | None = None,
    chunk: int = CHUNK,
    parallel_from: int = PARALLEL_FROM,
) -> AsyncIterator[list[StreamReport]]:
    """Audit the streams `ids`, yielding their reports a chunk at a time, in order.

    `finished`: runs recorded as finished (a stream of theirs without negotiation.ended
    was cut short); `recorded`: runs the read models know (a stream of theirs with no
    events had its rows deleted); `pins`: what an earlier audit saw of streams (each must
    still hold its pinned event). With `jobs` > 1 and at least `parallel_from` streams,
    chunks are read and audited in that many processes, each connecting to `dsn` (the
    store's own database: its search_path included) on its own (`map_streams`)."""
    done, known, pinned = set(finished), set(recorded), dict(pins or {})

    def facts(part: list[UUID]) -> _Facts:  # only the chunk's own, to each worker
        return _Facts(
            finished=frozenset(s for s in part if s in done),
            recorded=frozenset(s for s in part if s in known),
            pins={s: pinned[s] for s in part if s in pinned},
        )

    async for reports in map_streams(
        _audit_part,
        store,
        ids,
        StreamReport,
        arg_for=facts,
        dsn=dsn,
        jobs=jobs,
        chunk=chunk,
        parallel_from=parallel_from,
    ):
        yield reports
