"""The broker actor: the only publisher to agent inboxes, and the log's only writer.

It reads every agent's outbox, takes the sender from the subject, never the payload
(`actors.inbound`), asks the pure state machine what the turn means, and hands the
resulting events, with each agent's own view (visibility policy) and what observers see,
to the group committer (`storage.committer`): it appends them to the log and only after
the commit calls back the broker's `_deliver`, which publishes them. The committer owns
the commit pipeline (group commits, `commit_lanes` lanes, two by default, `mams broker
--commit-lanes`; barriers for deliveries-only messages such as welcome, catch-up and
rooms.opened; retries while the database is away; the drain on shutdown); when the
database refuses one command of a group, it says which (`_refused`) and the broker
re-reads that room from the log before its next command.

Crashes and restarts. The log is the truth, so a broker holds nothing the log does not:
`resume()` (call it before `run`) loads every stream whose last event is not
negotiation.ended, rebuilds each room's state with `replay` (`actors.rooms`), continues
its seq, and gives its current phase a fresh deadline (the full round_timeout from now).
With `leases` (`storage.leases`; `mams broker` and `mams run` pass them), a broker claims
every room it opens before the room's first commit, and `resume()` takes only rooms whose
broker is gone (its database connection ended), never those a live broker on the same
database serves. Agents that say hello again are welcomed with their open rooms and caught
up (`actors.greeting`: the room views, the sellers' answers to the buyer's last message,
which a crash between commit and publish may have kept from the buyer, and the owed
turns); the agent processes re-say hello every few seconds as a keepalive (re-sent only
their owed turns), so they notice a restarted broker on their own. A turn published while
no broker was listening is lost on the bus, never in the log: when the next broker
re-sends the turn the agent still owes, the agent publishes the same turn again (same
message id); an agent that does not (PROTOCOL.md asks it to) is closed out by the round's
deadline, so no room is left stuck.

Shutdown. Whatever was decided (queued or in flight in the committer: `Committer.drain`)
is always committed on the way out. Then, with `abort_on_shutdown=True` (the default;
in-process `mams run`, whose agents die with it), open rooms are recorded as aborted.
`mams broker` passes False: a clean stop leaves them open, exactly like a crash, and the
next `mams broker` resumes them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mams.actors.deadlines import Deadlines
from mams.actors.greeting import RESEND_AFTER, Greeting, greet, recall, redelivery
from mams.actors.hellos import HelloGates
from mams.actors.inbound import Control, Dropped, Reader, Refusal
from mams.actors.queues import put, take
from mams.actors.requests import MAX_RUNS as MAX_RUNS  # tests import it here
from mams.actors.requests import RefusedError, SessionStore, plan_rooms
from mams.actors.rooms import Rooms
from mams.actors.tuning import tune_gc
from mams.bus._buffer import BufferedSubscription
from mams.bus.base import Bus, Message
from mams.bus.subjects import AgentId, Subjects
from mams.domain.events import NegotiationStarted, decode_event
from mams.domain.messages import (
    MAX_TEXT,
    Hello,
    InboxMessage,
    OpenRooms,
    Rejected,
    RoomsOpened,
    encode,
)
from mams.domain.negotiation import Abort, Command, Deadline, FromAgent, Open, Phase
from mams.storage.committer import Batch, Committer
from mams.storage.errors import StorageError
from mams.storage.eventstore import EventStore, read_in_chunks
from mams.storage.leases import Leases
from mams.storage.resume import open_stream_ids as open_stream_ids  # cmd/ and tests import it here
from mams.storage.retry import retrying

log = structlog.get_logger("mams.broker")


_MAX_ANSWERED = 10_000  # open_rooms replies remembered (request_id -> reply), for repeats


@dataclass(frozen=True, slots=True)
class _Resync:
    """Re-send every agent of every open room its catch-up: the rooms a broker resumed
    (their last deliveries may never have gone out), or all after the bus reconnected.
    `quiet`: only wake the command loop (it re-reads rooms the database refused)."""

    quiet: bool = False


@dataclass(frozen=True, slots=True)
class _Forget:
    """Stop serving these rooms: another broker took them over (`Leases.keep`)."""

    rooms: list[UUID]


_Item = tuple[UUID, Command] | Control | Refusal | _Resync | _Forget


@dataclass(slots=True)
class BrokerStats:
    """Counters for benchmarks and health checks."""

    received: int = 0
    dropped: int = 0
    events: int = 0
    commits: int = 0
    delivered: int = 0


class Broker:
    """Routes turns between agents through the log. See the module docstring."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        subjects: Subjects,
        *,
        max_batch: int = 2000,
        commit_lanes: int = 2,
        retry_timeout: float = 60.0,
        sessions: SessionStore | None = None,
        abort_on_shutdown: bool = True,
        keep_ended: int = 1000,
        leases: Leases | None = None,
        configurers: Collection[str] = (),
    ) -> None:
        self.sessions = sessions
        # The agent ids the operator allowed to configure markets: only they may send an
        # open_rooms carrying a whole scenario (its sellers' private terms). Everyone else
        # may only open rooms of a session the operator stored, and only as its buyer.
        self.configurers = frozenset(configurers)
        # With leases, every room opened here is claimed before its first commit, and
        # resume() takes only rooms no live broker serves (storage.leases).
        self.leases = leases
        self.left_to_live = 0  # open rooms resume() left to the live brokers serving them
        self.abort_on_shutdown = abort_on_shutdown
        self.brains: dict[str, str] = {}  # agent id -> brain label, from hellos
        self._joined = anyio.Event()
        self.bus = bus
        self.store = store
        self.subjects = subjects
        self.max_batch = max_batch
        self.retry_timeout = retry_timeout
        self.stats = BrokerStats()
        self._inboxes: dict[str, str] = {}  # agent id -> inbox subject
        # The rooms, their states moved on by commands and rebuilt from the log
        # (actors.rooms); ended ones stay a while (`keep_ended`), then go, oldest first.
        self.table = Rooms(
            subjects,
            self._inbox,
            keep_ended=keep_ended,
            drop=self._drop,
            phase_began=self._push_deadline,
        )
        self.rooms = self.table.rooms  # by id
        self.resend_after = RESEND_AFTER  # a keepalive's re-sends (actors.greeting)
        self._commands: tuple[MemoryObjectSendStream[_Item], MemoryObjectReceiveStream[_Item]]
        self._commands = anyio.create_memory_object_stream[_Item](10_000)
        # The commit pipeline (storage.committer): it commits what this broker decides and
        # calls back `_deliver` once committed, `Rooms.stale` and `_refused` for refused
        # rooms.
        self.committer = Committer(
            store,
            self._deliver,
            lanes=commit_lanes,
            max_batch=max_batch,
            retry_timeout=retry_timeout,
            stale=self.table.stale,
            on_refused=self._refused,
            claim=None if leases is None else leases.claim,
        )
        self._deadlines = Deadlines()
        self.hellos = HelloGates()  # each agent's hello rate limit (actors.hellos)
        self.reader = Reader(subjects, self.hellos)  # outbox message -> command
        self._answered: dict[UUID, tuple[str, RoomsOpened]] = {}  # request_id -> reply

    # -- public API --------------------------------------------------------------------
    async def open(self, started: NegotiationStarted) -> None:
        """Open a negotiation room; its first events are committed and delivered soon."""
        await self._commands[0].send((started.negotiation_id, Open(started=started)))

    async def abort(self, negotiation_id: UUID, reason: str) -> None:
        """Abort one room (recorded as aborted)."""
        await self._commands[0].send((negotiation_id, Abort(reason=reason)))

    async def resync(self) -> None:
        """Re-send every agent of every open room its catch-up, after whatever is already
        queued. Call it when the bus has reconnected (`NatsBus.on_reconnect`): what was
        published while the server was away may be lost, and agents fold repeats once.
        Does nothing once the broker has stopped."""
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._commands[0].send(_Resync())

    async def joined(self, agents: set[str]) -> None:
        """Wait until every one of these agents has said hello."""
        while not agents <= self.brains.keys():
            await self._joined.wait()

    def running(self) -> list[UUID]:
        """Negotiations open and not yet ended."""
        return self.table.running()

    async def resume(
        self, candidates: Sequence[UUID] | None = None, *, resync: bool = True
    ) -> list[UUID]:
        """Take over the open rooms of the log (call before `run`): every stream among
        `candidates` (default: every stream of the store) whose last event is not
        negotiation.ended is replayed into a room, its seq continued and its current phase
        given a fresh deadline (the full round_timeout, from now). Returns their ids.

        `run` then re-sends every agent of these rooms its catch-up before it delivers
        anything else: the crashed broker may have committed what it never published, and
        an agent must not take its next turn without it (repeats are folded once).
        `resync=False` leaves that to the agents' hellos: for agents not yet running, which
        will all say a full catch-up hello (a re-send now would reach nobody)."""
        streams = await self.store.stream_ids() if candidates is None else candidates
        fresh = [nid for nid in streams if nid not in self.rooms]
        if self.leases is not None:
            ours = await self.leases.take_over(fresh)
            self.left_to_live = len(fresh) - len(ours)
            if self.left_to_live:
                log.info("broker.resume_left_to_live_brokers", rooms=self.left_to_live)
            fresh = ours
        resumed: list[UUID] = []
        async for read in read_in_chunks(self.store, fresh):
            resumed += self.table.restore(read)
        if resumed and resync:  # first in the queue: before anything `run` decides
            await self._commands[0].send(_Resync())
        log.info("broker.resumed", rooms=len(resumed), streams=len(streams))
        return resumed

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. On cancellation, what was decided is committed, and open
        rooms are recorded as aborted if `abort_on_shutdown` (see the module docstring).
        Raises the process's young-generation GC threshold (`actors.tuning`)."""
        tune_gc()
        sub = await self.bus.subscribe(self.subjects.all_outboxes(), max_pending=100_000)
        if isinstance(sub, BufferedSubscription):  # both buses' subscriptions are
            sub.admit = self._admit
        self.bus.on_reconnect(self.resync)  # what a NATS outage swallowed, sent again
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_bus, sub)
                tg.start_soon(self._deadlines.run, self._deadline_due)
                if self.leases is not None:
                    tg.start_soon(self.leases.keep, self.running, self._forget)
                await tg.start(self.committer.run)
                task_status.started()
                await self._process()
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
                await self._shutdown()
                for stream in self._commands:
                    stream.close()
                self.committer.close()

    # -- inbound: bus -> commands ------------------------------------------------------
    async def _read_bus(self, sub: object) -> None:
        send = self._commands[0]
        async for msg in sub:  # type: ignore[attr-defined]
            self.stats.received += 1
            parsed = self._parse(msg)
            if parsed is not None:
                await put(send, parsed)

    def _parse(self, msg: Message) -> _Item | None:
        hellos_dropped = self.hellos.dropped
        parsed = self.reader.parse(msg.subject, msg.data, time.monotonic())
        self.stats.dropped += self.hellos.dropped - hellos_dropped
        if isinstance(parsed, Dropped):
            self._drop(None, parsed.agent, parsed.reason)
            return parsed.then
        return parsed

    def _admit(self, subject: str, data: bytes) -> bool:
        # The bus's first look at a message: a muted agent's hellos go unread (hellos.py).
        if self.hellos.admit(subject, data, time.monotonic()):
            return True
        self.stats.received += 1
        self.stats.dropped += 1
        return False

    def _drop(
        self, nid: UUID | None, agent: str | None, reason: str, *, routine: bool = False
    ) -> None:
        # A repeated message id is routine: agents re-send a turn the broker seems to owe.
        self.stats.dropped += 1
        (log.info if routine else log.warning)(
            "broker.message_dropped",
            negotiation_id=str(nid) if nid else None,
            agent=agent,
            reason=reason,
        )

    # -- the core: commands -> events (serial, pure decisions) -----------------------
    async def _process(self) -> None:
        receive = self._commands[1]
        while True:
            try:
                item = await take(receive)
            except anyio.EndOfStream:
                return
            while self.table.broken:  # rooms the database refused a batch of: re-read first
                await self._reload(self.table.broken.pop())
            if isinstance(item, Control):
                for control_batch in await self._control(item):
                    await self.committer.submit(control_batch)
                continue
            if isinstance(item, Refusal):
                reply = Rejected(request_id=item.request_id, reason=item.reason[:MAX_TEXT])
                await self.committer.submit(self._deliver_only([(item.agent, reply)]))
                continue
            if isinstance(item, _Resync):
                if not item.quiet:
                    await self.committer.submit(self._redeliver())
                continue
            if isinstance(item, _Forget):
                for nid in item.rooms:
                    self.rooms.pop(nid, None)  # its deadlines find no room and pass
                continue
            nid, command = item
            try:
                batch = self._apply(nid, command)
            except Exception as exc:  # one message never takes the broker down
                agent = command.agent if isinstance(command, FromAgent) else None
                self._drop(nid, agent, f"could not be applied: {exc!r}")
                log.exception("broker.apply_failed", negotiation_id=str(nid))
                self.table.broken.add(nid)  # its state may be half-evolved: re-read it
                continue
            if batch is not None:
                await self.committer.submit(batch)

    async def _forget(self, rooms: list[UUID]) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._commands[0].send(_Forget(rooms))

    async def _control(self, item: Control) -> list[Batch]:
        """Hello and open-rooms requests: not about one room, answered on the inbox."""
        request = item.message
        if request is None:
            hello = self.hellos.take(item.agent)
            return [] if hello is None else self._hello(item.agent, hello)
        try:
            return await self._open_rooms(item.agent, request)
        except RefusedError as refused:
            reason = refused.reason
        except StorageError as exc:
            reason = f"the database could not serve this request ({exc}); send it again"
            log.warning("broker.request_failed", agent=item.agent, error=str(exc))
        except Exception as exc:  # one request never takes the broker down
            reason = f"the broker could not serve this request ({exc!r})"
            log.exception("broker.request_failed", agent=item.agent)
        log.warning("broker.request_rejected", agent=item.agent, reason=reason)
        reply = Rejected(request_id=request.request_id, reason=reason[:MAX_TEXT])
        return [self._deliver_only([(item.agent, reply)])]

    def _deliver_only(self, messages: list[tuple[str, InboxMessage]]) -> Batch:
        # No events, only deliveries; it still goes through the writer, so it follows
        # every batch decided before it (nothing is delivered ahead of its commit).
        return Batch(
            events=[],
            deliveries=[(self._inbox(a), encode(m)) for a, m in messages],
            observed=[],
        )

    def _redeliver(self) -> Batch:
        """Every agent's catch-up for every open room, without waiting for its hello."""
        rooms = self.running()
        messages = redelivery(self.rooms[nid].state for nid in rooms)
        log.info("broker.redelivered", rooms=len(rooms), messages=len(messages))
        return self._deliver_only(messages)

    def _hello(self, agent: str, hello: Hello) -> list[Batch]:
        known = agent in self.brains
        self.brains[agent] = hello.brain[:200] or "unannounced"
        self._joined.set()
        self._joined = anyio.Event()
        now = anyio.current_time()
        greeting = greet(
            agent, hello, self.rooms, known=known, now=now, resend_after=self.resend_after
        )
        (log.debug if known else log.info)(
            "broker.agent_joined",
            agent=agent,
            role=hello.role,
            brain=hello.brain,
            open_rooms=len(greeting.rooms),
        )
        if greeting.recap is not None:
            # The agent may have restarted and lost its conversation: the recap is read
            # from the log once every lane has committed what was decided before this hello.
            batch = self._deliver_only([])
            batch.late = partial(self._recall, greeting)
            return [batch]
        return [self._deliver_only(greeting.messages)]

    async def _recall(self, greeting: Greeting) -> list[tuple[str, bytes]]:
        return [(self._inbox(a), encode(m)) for a, m in await recall(self.store, greeting)]

    async def _open_rooms(self, agent: str, request: OpenRooms) -> list[Batch]:
        """Open the rooms a buyer asks for. Idempotent by `request_id`: the session and
        room ids are derived from it, so a request sent again (the buyer re-sends what was
        unanswered when a broker restarts) opens nothing twice and gets the same answer."""
        answered = self._answered.get(request.request_id)
        if answered is not None:
            owner, reply = answered
            if owner != agent:
                raise RefusedError("this request_id is taken; use a fresh one per request")
            log.info("broker.request_repeated", agent=agent, request_id=str(request.request_id))
            return [self._deliver_only([(agent, reply)])]
        if self.sessions is None:
            raise RefusedError(
                "this broker has no session store; run `mams broker` with a database"
            )
        session_id, rooms = await plan_rooms(
            agent, request, self.sessions, self.configurers, self.brains
        )
        batches: list[Batch] = []
        for started in rooms:
            batch = self._apply(started.negotiation_id, Open(started=started))
            if batch is not None:
                batches.append(batch)
        reply = RoomsOpened(
            request_id=request.request_id,
            session_id=session_id,
            negotiation_ids=tuple(r.negotiation_id for r in rooms),
            items=tuple(r.item_name for r in rooms),
        )
        self._answered[request.request_id] = (agent, reply)
        while len(self._answered) > _MAX_ANSWERED:
            del self._answered[next(iter(self._answered))]
        log.info("broker.rooms_opened", agent=agent, session_id=str(session_id), rooms=len(rooms))
        return [*batches, self._deliver_only([(agent, reply)])]

    def _apply(self, nid: UUID, command: Command) -> Batch | None:
        batch = self.table.apply(nid, command)
        if batch is not None:
            self.stats.events += len(batch.events)
        return batch

    def _inbox(self, agent_id: str) -> str:
        subject = self._inboxes.get(agent_id)
        if subject is None:  # validated once per agent, not per delivery
            subject = self._inboxes[agent_id] = self.subjects.inbox(AgentId(agent_id))
        return subject

    def _push_deadline(self, nid: UUID, round_: int, phase: Phase, timeout: float) -> None:
        now = anyio.current_time()
        if (room := self.rooms.get(nid)) is not None:
            room.since = now
        self._deadlines.push(nid, round_, phase, now + timeout)

    async def _deadline_due(self, nid: UUID, round_: int, phase: Phase) -> None:
        room = self.rooms.get(nid)
        if room is not None and room.state.round == round_ and room.state.phase == phase:
            await self._commands[0].send((nid, Deadline(round=round_, phase=phase)))

    # -- outbound: the committer's callbacks ----------------------------------------------
    def _refused(self, nid: UUID, reason: str) -> None:
        # The committer split a refused group down to this room's command: only it is
        # lost; the room is re-read from the log before its next command (`_reload`).
        self.table.broken.add(nid)
        self._drop(nid, None, reason)
        # Wake the command loop (it re-reads broken rooms first) even if no agent
        # speaks: a full queue means it is awake anyway.
        with contextlib.suppress(anyio.WouldBlock):
            self._commands[0].send_nowait(_Resync(quiet=True))

    async def _reload(self, nid: UUID) -> None:
        """Re-read one room from the log after the database refused a batch of it: its
        state and seq become the log's again, and what was decided on the refused state
        is stale (never committed)."""
        if nid not in self.rooms:
            return
        try:
            stored = await retrying(
                partial(self.store.read, nid),
                event="broker.database_unavailable",
                give_up_after=self.retry_timeout,
            )
            events = [decode_event(e.data) for e in stored]
        except Exception as exc:  # cannot re-read: leave the room to its deadlines
            log.exception("broker.reload_failed", negotiation_id=str(nid), error=repr(exc))
            return
        self.table.reload(nid, events, stored[-1].seq if stored else 0)

    async def _deliver(self, batches: Sequence[Batch]) -> None:
        for b in batches:
            for subject, data in b.deliveries:
                await self.bus.publish(subject, data)
            for subject, data in b.observed:
                await self.bus.publish(subject, data)
            self.stats.delivered += len(b.deliveries)
        # No flush (a round trip) here: the bus writes what is buffered as soon as this
        # task yields, and the next batch's commit need not wait for the server's answer.

    async def _shutdown(self) -> None:
        # What was decided (in flight or queued) is committed by the committer's drain,
        # then (if abort_on_shutdown) open rooms are recorded as aborted. Without abort,
        # open rooms stay open in the log for the next broker's resume(); their
        # undelivered messages are re-sent by catch_up when the agents say hello to it.
        aborts: list[Batch] = []
        if self.abort_on_shutdown:
            for nid in self.running():
                batch = self._apply(nid, Abort(reason="broker shut down"))
                if batch is not None:
                    aborts.append(batch)
        pending = await self.committer.drain(aborts)
        if not pending:
            return
        try:
            with anyio.fail_after(10):
                for b in pending:
                    for subject, data in b.observed:
                        await self.bus.publish(subject, data)
                await self.bus.flush()
        except Exception as exc:
            log.warning(
                "broker.shutdown_publish_failed",
                error=repr(exc),
                then="committed; observers read it from the log",
            )
