"""The group committer: the one commit pipeline between a decider and the log.

A decider (the broker) hands it `Batch`es: the events one command produced, and what to
send once they are committed. Invariant 3 lives here: nothing is delivered before the
events it follows from are committed, and each room's deliveries go out in the order its
batches were decided. Delivery is a callback (`deliver`), so storage imports no transport.

Appends are group-committed: whatever queued while the previous batch was being written
goes in the next single transaction. Under load a lane prepares its next batch while one
commits (at light load it waits and takes what queued meanwhile: fewer, larger commits).
Rooms are split over `lanes` writers that commit side by side; a room always takes the
same lane, so its stream is written in order, and deliveries-only batches (welcome,
catch-up, rooms.opened) are barriers every lane reaches before they go out.

A refused group (the database rejected something in it, not unavailable) is committed in
halves down to the one command at fault: only that command is lost, the rest commit and
are delivered, and `on_refused(room, reason)` tells the decider (which re-reads the room;
`stale(batch)` then says which batches were decided on the refused state, never committed).
While the database is unavailable every step is retried with backoff for `retry_timeout`
seconds (`storage.retry`), then DatabaseUnavailable stops the committer. On the way out,
`drain` commits whatever was queued or in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mams.storage.errors import DatabaseUnavailable, StorageError
from mams.storage.eventstore import EventStore, PipelinedStore, PreparedAppend
from mams.storage.handoff import put, take
from mams.storage.model import NewEvent
from mams.storage.retry import retrying

log = structlog.get_logger("mams.committer")

_T = TypeVar("_T")


@dataclass(slots=True)
class Batch:
    """Events of one command, and what to send once they are committed."""

    events: list[NewEvent]
    deliveries: list[tuple[str, bytes]]
    observed: list[tuple[str, bytes]]
    nid: UUID | None = None  # the room, or None for deliveries only (a barrier)
    # Deliveries only: computed when the barrier is reached instead, from the log as it
    # then stands (everything decided before it committed, nothing after).
    late: Callable[[], Awaitable[list[tuple[str, bytes]]]] | None = None
    generation: int = 0  # the room's generation when it was decided (the decider's)


Deliver = Callable[[Sequence[Batch]], Awaitable[None]]


@dataclass(eq=False, slots=True)
class _Barrier:
    """A deliveries-only batch every commit lane must reach: delivered once each lane has
    delivered all it was given before it, and no lane goes past it before then, so these
    messages keep their place in the order of everything decided."""

    batch: Batch
    waiting: int
    passed: anyio.Event = field(default_factory=anyio.Event)


_Queued = Batch | _Barrier
_Staged = _Barrier | tuple[list[Batch], PreparedAppend | None]


@dataclass(eq=False, slots=True)
class _Lane:
    """One commit lane: its own queue and writer; a room's batches always take the same
    lane, so each stream is still written strictly in order."""

    send: MemoryObjectSendStream[_Queued]
    receive: MemoryObjectReceiveStream[_Queued]
    held: _Queued | None = None  # taken from the queue, not yet handled
    preparing: list[Batch] = field(default_factory=list)  # prepared, waiting to commit
    inflight: list[Batch] = field(default_factory=list)  # being committed
    free: anyio.Event = field(default_factory=anyio.Event)  # set while nothing commits


# Below this many events, a lane's next batch waits for the commit in flight and takes
# what queued meanwhile: at light load there is little to prepare ahead, and one larger
# commit costs the database much less than two small ones.
LATE_TAKE_EVENTS = 100


def _never_stale(batch: Batch) -> bool:
    return False


def _events(batches: Sequence[Batch]) -> list[NewEvent]:
    return [e for b in batches for e in b.events]


class Committer:
    """Commits batches to `store` in group commits over `lanes` lanes and hands each to
    `deliver` only once committed (see the module docstring).

    `stale(batch)`: True for a batch that must be neither committed nor delivered (decided
    on a room state the database refused); `on_refused(room, reason)`: the database refused
    that room's command (called before any later batch is checked with `stale`); `claim`:
    called with the rooms whose first events a commit holds, before that commit
    (`Leases.claim`). Lifetime: `await tg.start(c.run)`; after `run` is cancelled,
    `await c.drain(...)` then `c.close()`."""

    def __init__(
        self,
        store: EventStore,
        deliver: Deliver,
        *,
        lanes: int = 2,
        max_batch: int = 2000,
        retry_timeout: float = 60.0,
        stale: Callable[[Batch], bool] = _never_stale,
        on_refused: Callable[[UUID, str], None] | None = None,
        claim: Callable[[list[UUID]], Awaitable[None]] | None = None,
    ) -> None:
        if lanes < 1:
            raise ValueError("commit_lanes must be at least 1")
        self.store = store
        self.deliver = deliver
        self.max_batch = max_batch
        self.retry_timeout = retry_timeout
        self.stale = stale
        self.on_refused = on_refused
        self.claim = claim
        self.commits = 0  # group commits made (counters for benchmarks and health checks)
        self._lanes = [
            _Lane(*anyio.create_memory_object_stream[_Queued](10_000)) for _ in range(lanes)
        ]

    # -- public API --------------------------------------------------------------------
    async def submit(self, batch: Batch) -> None:
        """Queue a batch: a room's goes to its lane; deliveries only (no room) become a
        barrier every lane reaches first. Waits only while a lane's queue is full."""
        lanes = self._lanes
        if batch.nid is not None:
            await put(lanes[batch.nid.int % len(lanes)].send, batch)
        else:
            barrier = _Barrier(batch, waiting=len(lanes))
            for lane in lanes:
                await put(lane.send, barrier)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run every lane's writer until cancelled (then call `drain`). A database still
        unavailable after `retry_timeout` raises DatabaseUnavailable out of here."""
        async with anyio.create_task_group() as tg:
            for lane in self._lanes:
                tg.start_soon(self._write_loop, lane)
            task_status.started()

    def pending(self) -> list[Batch]:
        """Every batch queued or in flight, not known to be committed, in order per lane
        (each once; barriers left out: they carry deliveries only)."""
        pending: list[Batch] = []
        for lane in self._lanes:
            queued: list[_Queued] = [*lane.inflight, *lane.preparing]
            if lane.held is not None:
                queued.append(lane.held)
            while True:
                try:
                    queued.append(lane.receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            # A batch handed from one stage to the next may be in both lists for an instant.
            for b in queued:
                if isinstance(b, Batch) and all(b is not p for p in pending):
                    pending.append(b)
        return pending

    async def drain(self, more: Sequence[Batch] = (), *, within: float = 10.0) -> list[Batch]:
        """After `run` stopped: commit what was queued or in flight, then `more`, within
        `within` seconds, stream by stream if the whole is refused (one stream's fault
        costs only its record). Re-appending an in-flight batch is safe: appends are
        idempotent by event id. Returns the batches handed to the store (delivering them is
        the caller's choice), or [] if that failed (logged: none of it was delivered)."""
        batches = [*self.pending(), *more]
        if not batches:
            return []
        # Shutting down: report what fails, never mask the cancellation.
        try:
            with anyio.fail_after(within):
                await self._append_apart(_events(batches))
        except Exception as exc:
            log.error(
                "broker.shutdown_commit_failed",
                error=repr(exc),
                then="what was decided and not yet committed is lost (none of it was delivered)",
            )
            return []
        return batches

    def close(self) -> None:
        """Close every lane's queue: `submit` fails from now on."""
        for lane in self._lanes:
            lane.send.close()
            lane.receive.close()

    # -- the lanes -----------------------------------------------------------------------
    async def _retrying(self, step: Callable[[], Awaitable[_T]]) -> _T:
        # Deliver nothing that is not committed: wait for the database to come back (the
        # one retry policy, storage.retry). Tried once first: the policy's machinery is
        # for the rare outage, not for every commit of the hot path.
        try:
            return await step()
        except DatabaseUnavailable as exc:
            log.warning("broker.database_unavailable", error=str(exc), then="retrying")
        return await retrying(
            step, event="broker.database_unavailable", give_up_after=self.retry_timeout
        )

    async def _write_loop(self, lane: _Lane) -> None:
        # Each lane writes in two stages: while one batch commits, the next is taken and,
        # if the store allows (PipelinedStore), prepared (deduped, hash-chained,
        # projected), so the writer's share of a commit overlaps the database's. A small
        # batch (light load: little to overlap) waits for the commit in flight instead and
        # takes what queued meanwhile, so the lane makes fewer, larger commits. A lane
        # commits one batch at a time, in order, and delivers nothing before its commit;
        # lanes commit side by side on separate connections.
        # Checked once per lane: isinstance against a runtime-checkable protocol is slow.
        store = self.store
        pipelined = store if isinstance(store, PipelinedStore) else None
        send, receive = anyio.create_memory_object_stream[_Staged](0)
        async with anyio.create_task_group() as tg, send:
            tg.start_soon(self._commit_loop, lane, receive, pipelined)
            while True:
                taken = await self._take_batches(lane)
                if isinstance(taken, _Barrier):
                    await send.send(taken)
                    continue
                lane.preparing = taken  # from here on, a drain commits these too
                if lane.inflight and sum(len(b.events) for b in taken) < LATE_TAKE_EVENTS:
                    await lane.free.wait()
                    self._take_more(lane, taken)
                prepared = None
                if pipelined is not None:
                    prepared = await self._retrying(partial(pipelined.prepare, _events(taken)))
                await send.send((taken, prepared))

    async def _commit_loop(
        self,
        lane: _Lane,
        receive: MemoryObjectReceiveStream[_Staged],
        pipelined: PipelinedStore | None,
    ) -> None:
        stale = self.stale
        async with receive:
            async for staged in receive:
                if isinstance(staged, _Barrier):
                    staged.waiting -= 1
                    if staged.waiting == 0:  # the last lane to arrive delivers it
                        if staged.batch.late is not None:
                            staged.batch.deliveries = await staged.batch.late()
                        await self.deliver([staged.batch])
                        staged.passed.set()
                    else:
                        await staged.passed.wait()
                    continue
                batches, prepared = staged
                lane.inflight = batches
                if lane.preparing is batches:
                    # Not blindly []: the write loop may already have taken its next
                    # batch (a send to a waiting receiver returns at once), and a
                    # drain must find that one too, or it is lost uncommitted.
                    lane.preparing = []
                lane.free = anyio.Event()
                current = [b for b in batches if not stale(b)]
                if self.claim is not None:
                    await self._claim(current)
                try:
                    if pipelined is None or len(current) < len(batches):
                        await self._retrying(partial(self.store.append, _events(current)))
                    elif prepared is not None:
                        await self._retrying(partial(pipelined.commit, prepared))
                except StorageError as exc:
                    if isinstance(exc, DatabaseUnavailable):
                        raise
                    current = await self._commit_apart(current, exc)
                self.commits += 1
                await self.deliver(current)
                lane.inflight = []
                lane.free.set()

    async def _take_batches(self, lane: _Lane) -> list[Batch] | _Barrier:
        # What queued in this lane, merged into one commit, up to its next barrier.
        first = lane.held if lane.held is not None else await take(lane.receive)
        lane.held = None
        if isinstance(first, _Barrier):
            return first
        batches = [first]
        self._take_more(lane, batches)
        return batches

    def _take_more(self, lane: _Lane, batches: list[Batch]) -> None:
        # Add what is queued, up to max_batch and never past a barrier.
        if lane.held is not None:
            return
        while len(batches) < self.max_batch:
            try:
                item = lane.receive.receive_nowait()
            except anyio.WouldBlock:
                return
            if isinstance(item, _Barrier):
                lane.held = item
                return
            batches.append(item)

    async def _claim(self, batches: Sequence[Batch]) -> None:
        # Rooms opened in these batches are claimed before their first commit, so no
        # other broker's resume() ever takes a room this one is serving.
        assert self.claim is not None
        opened = [b.nid for b in batches if b.nid is not None and b.events and b.events[0].seq == 1]
        if opened:
            await self._retrying(partial(self.claim, opened))

    async def _commit_apart(self, batches: list[Batch], error: StorageError) -> list[Batch]:
        """The database refused a group commit (not unavailable: something in it).
        Commit it in halves, down to the one command at fault, so that only that command
        is lost (`on_refused` is told its room; batches decided on top of it meanwhile are
        `stale` and dropped). Returns the batches committed, in order."""
        if len(batches) == 1:
            (bad,) = batches
            assert bad.nid is not None
            if self.on_refused is not None:
                self.on_refused(bad.nid, f"the database refused its events: {error}")
            return []
        done: list[Batch] = []
        half = len(batches) // 2
        for part in (batches[:half], batches[half:]):
            part = [b for b in part if not self.stale(b)]
            if not part:
                continue
            try:
                await self._retrying(partial(self.store.append, _events(part)))
                done += part
            except StorageError as exc:
                if isinstance(exc, DatabaseUnavailable):
                    raise
                done += await self._commit_apart(part, exc)
        return done

    async def _append_apart(self, events: list[NewEvent]) -> None:
        """Append; if the store rejects the whole (not unavailable: a bad stream), append
        stream by stream, so one stream's fault costs only that stream's record."""
        try:
            await self._retrying(partial(self.store.append, events))
            return
        except StorageError as exc:
            if isinstance(exc, DatabaseUnavailable):
                raise
            log.error("broker.shutdown_append_rejected", error=str(exc), then="stream by stream")
        streams: dict[UUID, list[NewEvent]] = {}
        for event in events:
            streams.setdefault(event.stream_id, []).append(event)
        for nid, own in streams.items():
            try:
                await self._retrying(partial(self.store.append, own))
            except StorageError as exc:
                if isinstance(exc, DatabaseUnavailable):
                    raise
                log.error("broker.stream_not_recorded", negotiation_id=str(nid), error=str(exc))
