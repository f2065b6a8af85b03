"""Auditing a whole log: streams read a chunk at a time, checked in worker processes.

`audit_stream` (`mams.storage.audit`) is pure and CPU-bound: on one core it checks about
40,000 events a second, so a log of ten million events would take four minutes. Here the
streams are split into chunks of `CHUNK` streams; each chunk is read in one query and
audited, by `jobs` worker processes side by side (each with its own connection, so the
reading is spread over them too), or in this process with `jobs=1`. Reports come back
in the order of the ids given, a chunk at a time, so a caller can show progress.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from uuid import UUID

import msgspec

from mams.storage.audit import Pin, StreamReport, audit_stream
from mams.storage.errors import StorageError
from mams.storage.eventstore import EventStore, PostgresEventStore
from mams.storage.pg import create_pool

CHUNK = 200  # streams per read: ~20,000 events of 100-event negotiations
MAX_JOBS = 8
# Below this many streams, starting processes (each imports MAMS: ~0.6 s) costs about
# what it saves (measured with bench/audit.py: 1000 streams took 1.9 s either way, 2000
# took 3.9 s in one process and 2.7 s in two).
PARALLEL_FROM = 8 * CHUNK

_reports = msgspec.msgpack.Decoder(list[StreamReport])
_encode = msgspec.msgpack.Encoder()


def default_jobs() -> int:
    """Worker processes for a large audit: one per core, at most `MAX_JOBS`."""
    return max(1, min(MAX_JOBS, os.cpu_count() or 1))


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
    still hold its pinned event). With `jobs` > 1 and enough streams, chunks are read and
    audited in that many processes, each connecting to `dsn` (the store's own database:
    its search_path included) on its own, and `store` reads nothing; below
    `parallel_from` streams, this process reads and audits them all. The workers are
    spawned, so a script calling this with `jobs` > 1 keeps its top-level work under
    `if __name__ == "__main__":` (as any program using multiprocessing must)."""
    chunks = [list(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    done = set(finished)
    known = set(recorded)
    pinned = pins or {}
    if jobs <= 1 or not dsn or len(ids) < parallel_from:
        for part in chunks:
            yield await audit_chunk(store, part, finished=done, recorded=known, pins=pinned)
        return
    context = multiprocessing.get_context("spawn")  # never fork a process with a loop
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(dsn,)
    ) as pool:
        ahead: list[Future[bytes]] = []
        try:
            for part in chunks:
                ahead.append(
                    pool.submit(
                        _audit_in_worker,
                        [sid.bytes for sid in part],
                        [sid.bytes for sid in part if sid in done],
                        [sid.bytes for sid in part if sid in known],
                        [(sid.bytes, pinned[sid]) for sid in part if sid in pinned],
                    )
                )
                if len(ahead) >= 2 * jobs:  # keep every worker busy, hold little
                    yield await _result(ahead.pop(0))
            while ahead:
                yield await _result(ahead.pop(0))
        finally:
            for future in ahead:
                future.cancel()


async def _result(future: Future[bytes]) -> list[StreamReport]:
    try:
        encoded: bytes = await asyncio.wrap_future(future)
    except BrokenProcessPool as exc:
        raise StorageError(
            f"an audit worker process died ({exc}); its error is printed above. Run "
            "`mams audit --all --jobs 1` to audit in this process."
        ) from exc
    return _reports.decode(encoded)


# -- worker processes ---------------------------------------------------------------------
_loop: asyncio.AbstractEventLoop | None = None
_store: PostgresEventStore | None = None


def _start_worker(dsn: str) -> None:
    global _loop, _store
    _loop = asyncio.new_event_loop()
    pool = _loop.run_until_complete(create_pool(dsn, min_size=1, max_size=1))
    _store = PostgresEventStore(pool, dsn=dsn)


def _audit_in_worker(
    ids: list[bytes],
    finished: list[bytes],
    recorded: list[bytes],
    pins: list[tuple[bytes, Pin]],
) -> bytes:
    assert _loop is not None, "the worker was not started"
    assert _store is not None, "the worker was not started"
    reports = _loop.run_until_complete(
        audit_chunk(
            _store,
            [UUID(bytes=b) for b in ids],
            finished={UUID(bytes=b) for b in finished},
            recorded={UUID(bytes=b) for b in recorded},
            pins={UUID(bytes=b): pin for b, pin in pins},
        )
    )
    return _encode.encode(reports)
