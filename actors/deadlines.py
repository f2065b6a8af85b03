"""The round deadlines of a broker's rooms: one timer task over a heap, whatever the
number of rooms."""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from uuid import UUID

import anyio

from mams.domain.negotiation import Phase


class Deadlines:
    """Deadlines by room, round and phase. `push` adds one; `run` calls `due` for each as
    it passes, earliest first (the caller checks whether the room is still there)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, UUID, int, Phase]] = []
        self._counter = 0
        self._added = anyio.Event()

    def push(self, nid: UUID, round_: int, phase: Phase, due: float) -> None:
        """Add the deadline of `nid`'s `round_` and `phase`, at `due` (anyio clock)."""
        self._counter += 1
        entry = (due, self._counter, nid, round_, phase)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:  # only a new earliest deadline changes what run waits for
            self._added.set()

    async def run(self, due: Callable[[UUID, int, Phase], Awaitable[None]]) -> None:
        """Call `due(nid, round, phase)` for each deadline as it passes, until cancelled."""
        heap = self._heap
        while True:
            if not heap:
                await self._added.wait()
                self._added = anyio.Event()
                continue
            when, _, nid, round_, phase = heap[0]
            wait = when - anyio.current_time()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._added.wait()
                if self._added.is_set():
                    self._added = anyio.Event()
                continue
            heapq.heappop(heap)
            await due(nid, round_, phase)
