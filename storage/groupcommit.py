"""Group commit: many concurrent appenders, one writer, one transaction per batch."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from mams.storage.errors import DatabaseUnavailable, StorageError
from mams.storage.eventstore import EventStore
from mams.storage.model import NewEvent

log = structlog.get_logger(__name__)


@dataclass
class CommitStats:
    """Counters for benchmarks and health checks."""

    batches: int = 0  # successful store.append calls made for whole batches
    events_committed: int = 0  # events handed to successful appends (incl. idempotent skips)
    callers_committed: int = 0
    isolated_batches: int = 0  # batches that failed and were retried caller by caller
    unavailable_retries: int = 0  # appends retried because the database was unavailable


@dataclass(eq=False)
class _Pending:
    events: Sequence[NewEvent]
    arrived: float
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class GroupCommitter:
    """Batches concurrent `append` calls into one `store.append` (one commit) per batch.

    A caller's `append` returns only after the batch holding its events committed. When a
    batch fails, each caller's events are retried alone, so only the guilty caller sees
    its ConcurrencyError (or other StorageError). While the database is unavailable the
    writer retries with exponential backoff for at most `retry_timeout` seconds, then the
    callers get DatabaseUnavailable. Retrying is safe because appends are idempotent: a
    batch whose commit was acknowledged-but-lost is skipped on the second try.

    `max_inflight` > 1 lets that many batches commit at once on separate connections
    (more throughput on a multi-core server), at a price: `global_pos` order then no
    longer follows commit order, so a reader tailing by position could briefly see a
    gap. With the default 1, this committer commits its batches strictly one by one.

    Lifetime: `async with GroupCommitter(store) as c:` or `await tg.start(c.run)` then
    `await c.aclose()` (which drains what is queued and makes `run` return).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        max_batch: int = 1000,
        max_delay: float = 0.002,
        retry_timeout: float = 60.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        max_inflight: int = 1,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self.store = store
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.retry_timeout = retry_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_inflight = max_inflight
        self.stats = CommitStats()
        self._queue: deque[_Pending] = deque()
        self._queued_events = 0
        self._wake = anyio.Event()  # something was queued, or closing
        self._full = anyio.Event()  # a full batch is queued: stop waiting for more
        self._running = False
        self._closing = False
        self._tg: TaskGroup | None = None

    # -- callers ----------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> None:
        """Append `events` atomically as part of the next batch; return once committed."""
        if not events:
            return
        if self._closing or not self._running:
            raise StorageError(
                "the group committer is not running; start it with `async with` or tg.start"
            )
        pending = _Pending(events, anyio.current_time())
        self._queue.append(pending)
        self._queued_events += len(events)
        self._wake.set()
        if self._queued_events >= self.max_batch:
            self._full.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    # -- lifetime ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the writer until `aclose()` (after draining the queue) or cancellation."""
        if self._running:
            raise RuntimeError("this GroupCommitter is already running")
        self._running = True
        self._closing = False
        task_status.started()
        try:
            await self._write_loop()
        finally:
            self._running = False
            self._closing = True
            stopped = StorageError(
                "the group committer stopped before these events were committed; "
                "append them again (appends are idempotent)"
            )
            while self._queue:
                self._queue.popleft().finish(stopped)
            self._queued_events = 0

    async def aclose(self) -> None:
        """Stop accepting appends; the writer commits what is queued, then `run` returns."""
        self._closing = True
        self._wake.set()

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self.run)
        except BaseException as exc:
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        tg, self._tg = self._tg, None
        assert tg is not None
        if exc is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
            return await tg.__aexit__(exc_type, exc, tb)
        # The writer drains the queue and returns; exit the group cleanly so the body's
        # own exception (say a ConcurrencyError) propagates as itself, not in a group.
        await tg.__aexit__(None, None, None)
        return None

    # -- writer -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        slots = anyio.Semaphore(self.max_inflight)
        async with anyio.create_task_group() as tg:
            while True:
                # Wait for a free slot first: callers arriving meanwhile join the next batch.
                await slots.acquire()
                try:
                    while not self._queue:
                        if self._closing:
                            return
                        self._wake = anyio.Event()
                        await self._wake.wait()
                    if self._queued_events < self.max_batch and not self._closing:
                        # Let more callers join, but never hold the first past max_delay.
                        deadline = self._queue[0].arrived + self.max_delay
                        self._full = anyio.Event()
                        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                            await self._full.wait()
                except BaseException:
                    slots.release()
                    raise
                tg.start_soon(self._commit_in_slot, self._take(), slots)

    async def _commit_in_slot(self, batch: list[_Pending], slots: anyio.Semaphore) -> None:
        try:
            await self._commit(batch)
        finally:
            slots.release()
            # Cancelled mid-commit: the outcome is unknown, so report failure, never success.
            for pending in batch:
                pending.finish(StorageError("the group committer was cancelled mid-commit"))

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].events) <= self.max_batch):
            pending = self._queue.popleft()
            batch.append(pending)
            size += len(pending.events)
        self._queued_events -= size
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        events = [e for pending in batch for e in pending.events]
        try:
            await self._append_retrying(events)
        except DatabaseUnavailable as exc:
            for pending in batch:
                pending.finish(exc)
            return
        except Exception as exc:  # isolate the guilty caller below
            if len(batch) == 1:
                batch[0].finish(exc)
                return
            self.stats.isolated_batches += 1
            log.info("storage.group_commit_isolating", callers=len(batch), error=repr(exc))
            for pending in batch:
                try:
                    await self._append_retrying(pending.events)
                except Exception as single_exc:  # goes to its own caller
                    pending.finish(single_exc)
                else:
                    self._count(1, len(pending.events))
                    pending.finish()
            return
        self._count(len(batch), len(events))
        for pending in batch:
            pending.finish()

    def _count(self, callers: int, events: int) -> None:
        self.stats.batches += 1
        self.stats.callers_committed += callers
        self.stats.events_committed += events

    async def _append_retrying(self, events: Sequence[NewEvent]) -> None:
        deadline = anyio.current_time() + self.retry_timeout
        delay = self.backoff_initial
        while True:
            try:
                await self.store.append(events)
                return
            except DatabaseUnavailable as exc:
                left = deadline - anyio.current_time()
                if left <= 0:
                    log.error("storage.group_commit_gave_up", error=str(exc))
                    raise
                self.stats.unavailable_retries += 1
                log.warning("storage.database_unavailable_retrying", delay=delay, error=str(exc))
                await anyio.sleep(min(delay, left))
                delay = min(delay * 2, self.backoff_max)
