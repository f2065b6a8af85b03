"""The broker actor: the only publisher to agent inboxes, and the log's only writer.

It reads every agent's outbox, takes the sender from the subject (never the payload),
asks the pure state machine what the turn means, appends the resulting events to the
log, and only after the commit delivers to each agent its own view (visibility policy)
and publishes the committed events to observers. Appends are group-committed: whatever
queued while the previous batch was being written goes in the next single transaction.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mams.bus.base import Bus, Message
from mams.bus.subjects import AgentId, SubjectError, Subjects
from mams.domain.events import (
    BuyerSaid,
    Event,
    NegotiationStarted,
    RoundOpened,
    encode_event,
    event_type,
)
from mams.domain.messages import (
    MAX_PAYLOAD,
    CommittedEvent,
    decode_outbox,
    encode,
    encode_committed,
)
from mams.domain.negotiation import (
    INITIAL,
    Abort,
    Command,
    Deadline,
    Drop,
    FromAgent,
    NegotiationState,
    Open,
    Phase,
    decide,
    evolve,
)
from mams.domain.visibility import route
from mams.storage.errors import DatabaseUnavailable
from mams.storage.eventstore import EventStore
from mams.storage.model import NewEvent

log = structlog.get_logger("mams.broker")


@dataclass(slots=True)
class _Room:
    state: NegotiationState = INITIAL
    seq: int = 0


@dataclass(slots=True)
class _Batch:
    """Events of one command, and what to send once they are committed."""

    events: list[NewEvent]
    deliveries: list[tuple[str, bytes]]
    observed: list[tuple[str, bytes]]


@dataclass(slots=True)
class BrokerStats:
    """Counters for benchmarks and health checks."""

    received: int = 0
    dropped: int = 0
    events: int = 0
    commits: int = 0
    delivered: int = 0


@dataclass(slots=True)
class _Deadlines:
    heap: list[tuple[float, int, UUID, int, Phase]] = field(default_factory=list)
    counter: int = 0


class Broker:
    """Routes turns between agents through the log. See the module docstring."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        subjects: Subjects,
        *,
        max_batch: int = 2000,
        retry_timeout: float = 60.0,
    ) -> None:
        self.bus = bus
        self.store = store
        self.subjects = subjects
        self.max_batch = max_batch
        self.retry_timeout = retry_timeout
        self.stats = BrokerStats()
        self.rooms: dict[UUID, _Room] = {}
        self._commands: tuple[
            MemoryObjectSendStream[tuple[UUID, Command]],
            MemoryObjectReceiveStream[tuple[UUID, Command]],
        ]
        self._commands = anyio.create_memory_object_stream[tuple[UUID, Command]](10_000)
        self._batches = anyio.create_memory_object_stream[_Batch](10_000)
        self._deadlines = _Deadlines()
        self._deadline_added = anyio.Event()
        self._inflight: list[_Batch] = []

    # -- public API --------------------------------------------------------------------
    async def open(self, started: NegotiationStarted) -> None:
        """Open a negotiation room; its first events are committed and delivered soon."""
        await self._commands[0].send((started.negotiation_id, Open(started=started)))

    async def abort(self, negotiation_id: UUID, reason: str) -> None:
        """Abort one room (recorded as aborted)."""
        await self._commands[0].send((negotiation_id, Abort(reason=reason)))

    def running(self) -> list[UUID]:
        """Negotiations open and not yet ended."""
        return [nid for nid, room in self.rooms.items() if room.state.phase != "ended"]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. On cancellation, open rooms are recorded as aborted."""
        sub = await self.bus.subscribe(self.subjects.all_outboxes(), max_pending=100_000)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_bus, sub)
                tg.start_soon(self._timers)
                tg.start_soon(self._write_loop)
                task_status.started()
                await self._process()
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
                await self._abort_open_rooms()
                for stream in (*self._commands, *self._batches):
                    stream.close()

    # -- inbound: bus -> commands ------------------------------------------------------
    async def _read_bus(self, sub: object) -> None:
        send = self._commands[0]
        async for msg in sub:  # type: ignore[attr-defined]
            self.stats.received += 1
            parsed = self._parse(msg)
            if parsed is not None:
                await send.send(parsed)

    def _parse(self, msg: Message) -> tuple[UUID, Command] | None:
        try:
            agent = self.subjects.agent_of_outbox(msg.subject)
        except SubjectError as exc:
            self._drop(None, None, f"bad subject: {exc}")
            return None
        if len(msg.data) > MAX_PAYLOAD:
            self._drop(None, str(agent), f"payload of {len(msg.data)} bytes exceeds {MAX_PAYLOAD}")
            return None
        try:
            turn = decode_outbox(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._drop(None, str(agent), f"malformed message: {exc}")
            return None
        return turn.negotiation_id, FromAgent(agent=str(agent), turn=turn)

    def _drop(self, nid: UUID | None, agent: str | None, reason: str) -> None:
        self.stats.dropped += 1
        log.warning(
            "broker.message_dropped",
            negotiation_id=str(nid) if nid else None,
            agent=agent,
            reason=reason,
        )

    # -- the core: commands -> events (serial, pure decisions) -----------------------
    async def _process(self) -> None:
        receive = self._commands[1]
        batches = self._batches[0]
        async for nid, command in receive:
            batch = self._apply(nid, command)
            if batch is not None:
                await batches.send(batch)

    def _apply(self, nid: UUID, command: Command) -> _Batch | None:
        room = self.rooms.get(nid)
        if room is None:
            if not isinstance(command, Open):
                agent = command.agent if isinstance(command, FromAgent) else None
                self._drop(nid, agent, "no such negotiation")
                return None
            room = self.rooms[nid] = _Room()
        result = decide(room.state, command)
        if isinstance(result, Drop):
            agent = command.agent if isinstance(command, FromAgent) else None
            if not isinstance(command, Deadline):  # stale deadlines are routine
                self._drop(nid, agent, result.reason)
            return None
        batch = _Batch(events=[], deliveries=[], observed=[])
        events_subject = self.subjects.events(nid)
        for event in result:
            room.state = evolve(room.state, event)
            room.seq += 1
            batch.events.append(
                NewEvent(
                    stream_id=nid,
                    seq=room.seq,
                    event_id=uuid.uuid4(),
                    type=event_type(event),
                    data=encode_event(event),
                )
            )
            for agent_id, message in route(room.state, event):
                batch.deliveries.append((self.subjects.inbox(AgentId(agent_id)), encode(message)))
            batch.observed.append(
                (
                    events_subject,
                    encode_committed(CommittedEvent(negotiation_id=nid, seq=room.seq, event=event)),
                )
            )
            self._schedule(nid, room.state, event)
        self.stats.events += len(result)
        return batch

    def _schedule(self, nid: UUID, state: NegotiationState, event: Event) -> None:
        if state.started is None or not isinstance(event, RoundOpened | BuyerSaid):
            return
        phase: Phase = "buyer_turn" if isinstance(event, RoundOpened) else "sellers_turn"
        due = anyio.current_time() + state.started.round_timeout
        d = self._deadlines
        d.counter += 1
        heapq.heappush(d.heap, (due, d.counter, nid, state.round, phase))
        self._deadline_added.set()

    async def _timers(self) -> None:
        send = self._commands[0]
        d = self._deadlines
        while True:
            if not d.heap:
                await self._deadline_added.wait()
                self._deadline_added = anyio.Event()
                continue
            due, _, nid, round_, phase = d.heap[0]
            wait = due - anyio.current_time()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._deadline_added.wait()
                if self._deadline_added.is_set():
                    self._deadline_added = anyio.Event()
                continue
            heapq.heappop(d.heap)
            room = self.rooms.get(nid)
            if room is not None and room.state.round == round_ and room.state.phase == phase:
                await send.send((nid, Deadline(round=round_, phase=phase)))

    # -- outbound: commit, then deliver --------------------------------------------------
    async def _write_loop(self) -> None:
        receive = self._batches[1]
        while True:
            batches = [await receive.receive()]
            while len(batches) < self.max_batch:
                try:
                    batches.append(receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            self._inflight = batches
            await self._commit_and_deliver(batches)
            self._inflight = []

    async def _commit_and_deliver(self, batches: Sequence[_Batch]) -> None:
        events = [e for b in batches for e in b.events]
        await self._append_retrying(events)
        self.stats.commits += 1
        for b in batches:
            for subject, data in b.deliveries:
                await self.bus.publish(subject, data)
            for subject, data in b.observed:
                await self.bus.publish(subject, data)
            self.stats.delivered += len(b.deliveries)
        await self.bus.flush()

    async def _append_retrying(self, events: list[NewEvent]) -> None:
        # Deliver nothing that is not committed: wait for the database to come back.
        delay, waited = 0.05, 0.0
        while True:
            try:
                await self.store.append(events)
                return
            except DatabaseUnavailable as exc:
                if waited >= self.retry_timeout:
                    raise
                log.warning("broker.database_unavailable", retry_in=delay, error=str(exc))
                await anyio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    async def _abort_open_rooms(self) -> None:
        # Called on shutdown: what was decided (in flight or queued) is committed, then open
        # rooms are recorded as aborted. Re-appending an in-flight batch is safe: appends
        # are idempotent by event id.
        pending: list[_Batch] = list(self._inflight)
        while True:
            try:
                pending.append(self._batches[1].receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        for nid in self.running():
            batch = self._apply(nid, Abort(reason="broker shut down"))
            if batch is not None:
                pending.append(batch)
        if not pending:
            return
        try:
            with anyio.fail_after(10):
                await self._append_retrying([e for b in pending for e in b.events])
                for b in pending:
                    for subject, data in b.observed:
                        await self.bus.publish(subject, data)
                await self.bus.flush()
        except Exception as exc:  # shutting down: report, never mask the cancellation
            log.error("broker.abort_record_failed", error=repr(exc))
