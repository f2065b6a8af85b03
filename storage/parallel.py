"""Work over many streams, a chunk at a time, in this process or in worker processes.

Reading a whole log and checking or analysing each negotiation (`mams audit --all`,
`mams report`) is CPU-bound Python: one core does a few tens of thousands of events a
second. `map_streams` splits the stream ids into chunks; each chunk is handed to `work`
(an async function of a store, the chunk's ids and an argument, returning one result per
id), either here or in `jobs` worker processes side by side, each with its own
connection (so the reading is spread over them too). Results come back in the order of
the ids, a chunk at a time, so a caller can show progress.

Worker processes are spawned, so `work` must be a module-level function, its argument
and results picklable, its results encodable by msgspec as `result_type`; and a script
calling `map_streams` with `jobs` > 1 keeps its top-level work under
`if __name__ == "__main__":` (as any program using multiprocessing must).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import structlog

from mams.storage.errors import StorageError
from mams.storage.eventstore import EventStore, PostgresEventStore
from mams.storage.pg import create_pool

T = TypeVar("T")
Work = Callable[[EventStore, list[UUID], Any], Awaitable[Sequence[Any]]]

CHUNK = 200  # streams per read: ~20,000 events of 100-event negotiations
MAX_JOBS = 8
# Below this many streams, starting processes (each imports MAMS: ~0.6 s) costs about
# what it saves (measured with bench/audit.py: 1000 streams took 1.9 s either way, 2000
# took 3.9 s in one process and 2.7 s in two). MAMS_PARALLEL_FROM, a whole number,
# overrides it (the CLI tests set 0 to run small logs through real workers).
_parallel_from = os.environ.get("MAMS_PARALLEL_FROM", "")
PARALLEL_FROM = int(_parallel_from) if _parallel_from.isdigit() else 8 * CHUNK

_encode = msgspec.msgpack.Encoder()


def default_jobs() -> int:
    """Worker processes for a large job: one per core, at most `MAX_JOBS`."""
    return max(1, min(MAX_JOBS, os.cpu_count() or 1))


def _no_arg(ids: list[UUID]) -> None:
    return None


async def map_streams(
    work: Work,
    store: EventStore,
    ids: Sequence[UUID],
    result_type: type[T],
    *,
    arg_for: Callable[[list[UUID]], Any] = _no_arg,
    dsn: str = "",
    jobs: int = 1,
    chunk: int = CHUNK,
    parallel_from: int = PARALLEL_FROM,
) -> AsyncIterator[list[T]]:
    """`work(store, chunk_ids, arg_for(chunk_ids))` for each chunk of `ids`, yielding each
    chunk's results in order. With `jobs` > 1 and at least `parallel_from` ids, chunks run
    in that many processes, each connecting to `dsn` (the store's own database, its
    search_path included) on its own, and `store` reads nothing."""
    chunks = [list(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    if jobs <= 1 or not dsn or len(ids) < parallel_from:
        for part in chunks:
            yield list(await work(store, part, arg_for(part)))
        return
    decoder = msgspec.msgpack.Decoder(list[result_type])  # type: ignore[valid-type]
    context = multiprocessing.get_context("spawn")  # never fork a process with a loop
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(dsn,)
    ) as pool:
        ahead: list[Future[bytes]] = []
        try:
            for part in chunks:
                ids_bytes = [sid.bytes for sid in part]
                ahead.append(pool.submit(_run_in_worker, work, ids_bytes, arg_for(part)))
                if len(ahead) >= 2 * jobs:  # keep every worker busy, hold little
                    yield await _result(ahead.pop(0), decoder)
            while ahead:
                yield await _result(ahead.pop(0), decoder)
        finally:
            for future in ahead:
                future.cancel()


async def _result(future: Future[bytes], decoder: msgspec.msgpack.Decoder[Any]) -> list[Any]:
    try:
        encoded: bytes = await asyncio.wrap_future(future)
    except BrokenProcessPool as exc:
        raise StorageError(
            f"a worker process died ({exc}); its error is printed above. Run with "
            "`--jobs 1` to do the work in this process."
        ) from exc
    results: list[Any] = decoder.decode(encoded)
    return results


# -- worker processes ---------------------------------------------------------------------
_loop: asyncio.AbstractEventLoop | None = None
_store: PostgresEventStore | None = None


def _start_worker(dsn: str) -> None:
    global _loop, _store
    # Ctrl-C reaches the whole process group: the parent stops the pool, a worker just
    # stops (no traceback of its own). Whatever a worker logs goes to stderr, warnings
    # and up only: stdout may be carrying a command's JSON.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    _loop = asyncio.new_event_loop()
    pool = _loop.run_until_complete(create_pool(dsn, min_size=1, max_size=1))
    _store = PostgresEventStore(pool, dsn=dsn)


def _run_in_worker(work: Work, ids: list[bytes], arg: Any) -> bytes:
    assert _loop is not None, "the worker was not started"
    assert _store is not None, "the worker was not started"
    results = _loop.run_until_complete(work(_store, [UUID(bytes=b) for b in ids], arg))
    return _encode.encode(list(results))
