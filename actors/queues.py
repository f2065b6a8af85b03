"""Memory-stream hand-offs for the actors' hot loops (`put`, `take`: from
`storage.handoff`, which the committer uses too), and the agents' pool of turns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from mams.storage.handoff import put as put
from mams.storage.handoff import take as take

Job = Callable[[], Awaitable[None]]


class TurnPool:
    """Runs an agent's turns so that rooms never wait for each other, cheaply.

    `workers` tasks take queued turns back to back: an instant brain never yields, so a
    burst of turns costs no task each and their publishes go out together. When every
    task is inside a turn (a slow brain: model calls in flight) and turns are waiting,
    one more task is started, up to `limit` turns in flight; such an extra task ends when
    it finds nothing queued. So a model's concurrency is bounded by its provider's
    limiter (`MAMS_LLM_CONCURRENCY`), not by this pool. Beyond `limit`, turns queue (up
    to `queue`; then `submit` waits).
    """

    def __init__(self, workers: int, limit: int, queue: int) -> None:
        if workers < 1 or limit < workers:
            raise ValueError(f"need 1 <= workers <= limit, got workers={workers} limit={limit}")
        self.workers = workers
        self.limit = limit
        self.running = 0  # tasks alive
        self.busy = 0  # tasks inside a turn
        self.peak = 0  # most tasks alive at once
        self._send, self._receive = anyio.create_memory_object_stream[Job](queue)
        self._tg: TaskGroup | None = None

    def start(self, tg: TaskGroup) -> None:
        """Start the permanent workers in `tg` (extra ones are started there too)."""
        self._tg = tg
        for _ in range(self.workers):
            self._spawn(permanent=True)

    def close(self) -> None:
        """Stop: turns still queued are dropped, waiting tasks end. Idempotent."""
        self._send.close()
        self._receive.close()

    async def submit(self, job: Job) -> None:
        """Queue a turn (a task waiting for one takes it at once)."""
        self._grow(adding=1)
        await put(self._send, job)

    def _grow(self, adding: int = 0) -> None:
        # One more task if every live one is inside a turn and a turn would wait. Cheap
        # for an instant brain: its tasks are rarely all inside turns at once.
        if self.busy < self.running or self.running >= self.limit or self._tg is None:
            return
        stats = self._send.statistics()
        if stats.tasks_waiting_receive == 0 and stats.current_buffer_used + adding > 0:
            self._spawn(permanent=False)

    def _spawn(self, *, permanent: bool) -> None:
        assert self._tg is not None
        self.running += 1
        self.peak = max(self.peak, self.running)
        self._tg.start_soon(self._work, permanent)

    async def _work(self, permanent: bool) -> None:
        receive = self._receive
        try:
            while True:
                try:
                    job = receive.receive_nowait()
                except anyio.WouldBlock:
                    if not permanent:
                        return
                    job = None
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                if job is None:
                    try:
                        job = await receive.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                self.busy += 1
                try:
                    self._grow()
                    await job()
                finally:
                    self.busy -= 1
        finally:
            self.running -= 1
