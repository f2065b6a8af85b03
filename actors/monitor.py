"""The quality monitor: an observer actor that grades negotiations as they run.

It subscribes to the committed events (`<prefix>.events.>`, the observer's permission:
subscribe only), feeds each negotiation's events to a `QualityChecker` and records what
fires as `quality.flagged` observations in the negotiation's companion stream. It reads
only what the log already holds, so its findings are exactly those of `check()` over the
stored stream: when it joins late, restarts or misses a delivery (a gap in seq), it reads
the missing events from the store before going on.

Findings are recorded idempotently (by content), so a monitor restarted mid-run, two
monitors, and an on-demand `mams analyze` never store a finding twice.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from mams.bus.base import Bus
from mams.bus.subjects import Subjects
from mams.domain.events import Event, NegotiationEnded, QualityFlagged, decode_event
from mams.domain.messages import CommittedEvent, decode_committed
from mams.domain.quality import QualityChecker, check
from mams.storage.errors import StorageError
from mams.storage.eventstore import EventStore
from mams.storage.observations import load_observations, record_observations

log = structlog.get_logger("mams.monitor")

OnEnded = Callable[[UUID, list[QualityFlagged]], Awaitable[None]]
OnFlag = Callable[[QualityFlagged], None]


@dataclass(slots=True)
class _Room:
    checker: QualityChecker = field(default_factory=QualityChecker)
    seq: int = 0
    seen_at: float = 0.0  # when its last event arrived (anyio clock)
    ended: bool = False


@dataclass(slots=True)
class MonitorStats:
    """What the monitor has done so far."""

    events: int = 0
    flags: int = 0
    recorded: int = 0
    caught_up: int = 0
    ended: int = 0


STOP_DRAIN_SECONDS = 10.0  # how long a stopping monitor may spend reading what it missed


class QualityMonitor:
    """Grades every negotiation on the bus; `run` until cancelled."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        subjects: Subjects,
        *,
        on_ended: OnEnded | None = None,
        keep_ended: int = 10_000,
        on_flag: OnFlag | None = None,
        idle: float = 10.0,
    ) -> None:
        self.bus, self.store, self.subjects = bus, store, subjects
        # A room silent this long is read from the store: an event whose delivery was lost
        # (a broker killed between its commit and its publish) is still graded.
        self.idle = idle
        self.on_ended = on_ended
        self.on_flag = on_flag
        self.stats = MonitorStats()
        self._rooms: dict[UUID, _Room] = {}
        self._done: dict[UUID, anyio.Event] = {}
        # Rooms graded to their end, oldest first; beyond `keep_ended` they are forgotten
        # (a late duplicate of one of their events is then re-graded from the store, and
        # recording it again is a no-op).
        self.keep_ended = keep_ended
        self._finished: deque[UUID] = deque()
        self._flags: dict[UUID, list[QualityFlagged]] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, signal started, then grade committed events until cancelled; on the
        way out, grade from the store what the open rooms missed."""
        sub = await self.bus.subscribe(self.subjects.all_events(), max_pending=1_000_000)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sweep_idle)
                task_status.started()
                async for msg in sub:
                    await self._handle(msg.subject, msg.data)
        finally:
            # Stopping: what the store holds beyond what the open rooms saw is graded now
            # (a broker killed between a commit and its publish), not left to a sweep that
            # will not come. Bounded, so a stop never hangs on a dead database.
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
                with anyio.move_on_after(STOP_DRAIN_SECONDS):
                    try:
                        await self.sweep(older_than=0.0)
                    except StorageError as exc:
                        log.warning("monitor.stop_drain_failed", error=str(exc))

    async def _handle(self, subject: str, data: bytes) -> None:
        """One delivery: graded, or dropped with a logged reason. Nothing one message holds
        (nor a failed read of its room) may stop the monitor grading the others."""
        try:
            committed = decode_committed(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("monitor.bad_event", subject=subject, error=str(exc)[:500])
            return
        try:
            await self.observe(committed)
        except Exception as exc:
            log.warning(
                "monitor.event_failed",
                subject=subject,
                negotiation_id=str(committed.negotiation_id),
                error=repr(exc)[:500],
            )

    async def _sweep_idle(self) -> None:
        while True:
            await anyio.sleep(self.idle / 2)
            await self.sweep(older_than=self.idle)

    async def sweep(self, *, older_than: float) -> int:
        """Read rooms silent for `older_than` seconds from the store and grade what they
        missed, finishing those that ended; how many ended so."""
        now = anyio.current_time()
        quiet = [nid for nid, r in self._rooms.items() if now - r.seen_at >= older_than]
        finished = 0
        for nid in quiet:
            room = self._rooms.get(nid)
            if room is not None:
                room.seen_at = now
                try:
                    finished += await self._drain(nid)
                except Exception as exc:  # one room's log unreadable: the others go on
                    log.warning("monitor.sweep_failed", negotiation_id=str(nid), error=repr(exc))
        return finished

    async def _drain(self, nid: UUID) -> bool:
        """Grade whatever the store holds beyond what the room saw; finish it if it ended."""
        room = self._rooms.setdefault(nid, _Room())
        await self._found(nid, await self._catch_up(nid, room, upto=2**31))
        if room.ended:
            await self._finish(nid)
        return room.ended

    async def observe(self, committed: CommittedEvent) -> list[QualityFlagged]:
        """Grade one committed event (catching up from the store on a gap); the new flags."""
        nid = committed.negotiation_id
        room = self._rooms.get(nid)
        if room is None:
            if self._ended(nid):
                return []  # a late duplicate of an ended room's event
            room = self._rooms[nid] = _Room()
        room.seen_at = anyio.current_time()
        if committed.seq <= room.seq:
            return []  # already seen
        found: list[QualityFlagged] = []
        if committed.seq > room.seq + 1:
            found += await self._catch_up(nid, room, committed.seq - 1)
        if committed.seq <= room.seq or room.ended:  # a sweep fed it meanwhile
            await self._found(nid, found)
            return found
        found += room.checker.feed(committed.event)
        room.seq = committed.seq
        room.ended = isinstance(committed.event, NegotiationEnded)
        self.stats.events += 1
        await self._found(nid, found)
        if isinstance(committed.event, NegotiationEnded):
            await self._finish(nid)
        return found

    async def _found(self, nid: UUID, found: list[QualityFlagged]) -> None:
        """Keep, record and announce new findings."""
        if not found:
            return
        self.stats.flags += len(found)
        self._flags.setdefault(nid, []).extend(found)
        await self._record(nid, found)
        if self.on_flag is not None:
            for flag in found:
                self.on_flag(flag)

    async def _record(self, nid: UUID, found: list[QualityFlagged]) -> None:
        try:
            self.stats.recorded += await record_observations(self.store, nid, found)
        except StorageError as exc:
            # Grading must not stop a market; `mams analyze` recomputes and records them.
            log.warning("monitor.record_failed", negotiation_id=str(nid), error=str(exc))

    async def _catch_up(self, nid: UUID, room: _Room, upto: int) -> list[QualityFlagged]:
        """Feed the stored events after `room.seq` up to `upto` (a gap, or a late join)."""
        self.stats.caught_up += 1
        found: list[QualityFlagged] = []
        for stored in await self.store.read(nid, after_seq=room.seq):
            if stored.seq > upto:
                break
            if stored.seq != room.seq + 1:  # fed meanwhile by a live event, or a gap
                continue
            event = decode_event(stored.data)
            found += room.checker.feed(event)
            room.seq = stored.seq
            room.ended = isinstance(event, NegotiationEnded)
        return found

    async def _finish(self, nid: UUID) -> None:
        if self._ended(nid):
            return  # finished already (live and by a sweep at once)
        self._rooms.pop(nid, None)
        flags = self._flags.pop(nid, [])
        self.stats.ended += 1
        if self.on_ended is not None:
            try:
                await self.on_ended(nid, flags)
            except Exception as exc:  # an exporter's failure must not stop grading
                log.warning("monitor.on_ended_failed", negotiation_id=str(nid), error=repr(exc))
        self._done.setdefault(nid, anyio.Event()).set()
        self._finished.append(nid)
        while len(self._finished) > self.keep_ended:  # a monitor serving forever stays bounded
            self._done.pop(self._finished.popleft(), None)

    def _ended(self, nid: UUID) -> bool:
        done = self._done.get(nid)
        return done is not None and done.is_set()

    async def settle(self, negotiation_ids: Iterable[UUID], *, wait: float = 5.0) -> None:
        """Return once every one of these (ended) rooms is graded and recorded.

        Waits up to `wait` seconds for the live events; a room whose end never arrived
        (a dropped delivery) is then finished from the store.
        """
        ids = list(negotiation_ids)
        with anyio.move_on_after(wait):
            for nid in ids:
                await self._done.setdefault(nid, anyio.Event()).wait()
        for nid in ids:
            if not self._ended(nid) and not await self._drain(nid):
                await self._finish(nid)  # told it ended; the store disagrees: stop waiting


def galileo_hook(store: EventStore, env: Mapping[str, str] | None = None) -> OnEnded | None:
    """When GALILEO_API_KEY is set: export each graded negotiation (with its flags) to
    Galileo at its end. Failures are logged by the monitor, never fatal."""
    from mams.actors.galileo import export_negotiation, galileo_enabled

    environ = os.environ if env is None else env
    if not galileo_enabled(environ):
        return None

    async def export(nid: UUID, flags: list[QualityFlagged]) -> None:
        await export_negotiation(store, nid, env=environ)

    return export


async def grade_stored(store: EventStore, negotiation_id: UUID) -> list[QualityFlagged]:
    """Run every check over a stored negotiation and record the findings the log lacks.

    The on-demand twin of the live monitor (same findings, recorded once): for runs that
    had no monitor, and for logs written before a check existed.
    """
    events = [decode_event(row.data) for row in await store.read(negotiation_id)]
    return await grade_events(store, negotiation_id, events)


async def grade_events(
    store: EventStore, negotiation_id: UUID, events: Sequence[Event]
) -> list[QualityFlagged]:
    """`grade_stored` of a negotiation whose events are already read."""
    flags = check(events)
    if flags:
        await record_observations(store, negotiation_id, flags)
    return flags


async def stored_flags(store: EventStore, negotiation_id: UUID) -> list[QualityFlagged]:
    """The quality flags recorded for a negotiation (live or on demand)."""
    found = await load_observations(store, negotiation_id)
    return [o for o in found if isinstance(o, QualityFlagged)]
