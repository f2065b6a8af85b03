"""The broker's rooms: what it holds of the log, and how a command moves a room on.

Each room is its state (`evolve` folds its events), the seq of its last event, when its
current phase began (a keepalive re-sends only turns owed a while: `actors.greeting`) and
a generation. `apply` asks `decide` what a command means and turns the events into the
batch the committer writes: the log's rows, each addressed agent's own view
(`visibility.route`) and what observers see. Ended rooms stay a while (`keep_ended`, then
oldest first), so late or repeated turns are dropped as "ended".

The log is the truth, and rooms are rebuilt from it: `restore` the open rooms of the
streams a broker resumes, `reload` a room after the database refused one of its batches.
A reload bumps the room's generation: batches decided on the refused state are `stale`
(never committed, never delivered).

No I/O: the broker reads the log, and is told of every drop (`drop`) and of every phase
that begins (`phase_began`: it sets the round's deadline and notes the time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import msgspec
import structlog

from mams.actors.ids import RandomIds
from mams.bus.subjects import Subjects
from mams.domain.events import (
    BuyerSaid,
    Event,
    NegotiationEnded,
    RoundOpened,
    decode_event,
    encode_event,
    event_type,
)
from mams.domain.messages import committed_prefix, encode, encode_committed_json
from mams.domain.negotiation import (
    DUPLICATE,
    INITIAL,
    Command,
    Deadline,
    Drop,
    FromAgent,
    NegotiationState,
    Open,
    Phase,
    decide,
    evolve,
    phase_timeout,
    replay,
)
from mams.domain.visibility import route
from mams.storage.committer import Batch
from mams.storage.model import NewEvent, StoredEvent

log = structlog.get_logger("mams.broker")


@dataclass(slots=True)
class Room:
    committed: bytes  # committed_prefix of its id: observers' messages start so
    state: NegotiationState = INITIAL
    seq: int = 0
    since: float = 0.0  # when its current phase began (anyio clock): turns owed since
    # Bumped when the room is re-read from the log (the database refused one of its
    # batches): batches decided on the state before that are stale and never committed.
    generation: int = 0


class OnDrop(Protocol):
    def __call__(
        self, nid: UUID | None, agent: str | None, reason: str, *, routine: bool = False
    ) -> None:
        """A command (or batch) not acted on, and why; `routine` if expected (a repeat)."""


PhaseBegan = Callable[[UUID, int, Phase, float], None]  # (room, round, phase, timeout)


class Rooms:
    """The rooms one broker serves, by id. See the module docstring."""

    def __init__(
        self,
        subjects: Subjects,
        inbox: Callable[[str], str],
        *,
        keep_ended: int,
        drop: OnDrop,
        phase_began: PhaseBegan,
    ) -> None:
        self.rooms: dict[UUID, Room] = {}
        self.keep_ended = keep_ended
        self.broken: set[UUID] = set()  # rooms whose batch the database refused
        self._ended: deque[UUID] = deque()
        self._subjects = subjects
        self._inbox = inbox  # agent id -> its inbox subject
        self._drop = drop
        self._phase_began = phase_began
        self._event_ids = RandomIds()

    def running(self) -> list[UUID]:
        """Negotiations open and not yet ended."""
        return [nid for nid, room in self.rooms.items() if room.state.phase != "ended"]

    def apply(self, nid: UUID, command: Command) -> Batch | None:
        """The batch a command makes of room `nid` (its state moved on), or None if it
        makes nothing (dropped, with its reason, to `drop`)."""
        room = self.rooms.get(nid)
        if room is None:
            if not isinstance(command, Open):
                agent = command.agent if isinstance(command, FromAgent) else None
                self._drop(nid, agent, "no such negotiation")
                return None
            room = self.rooms[nid] = Room(committed=committed_prefix(nid))
        result = decide(room.state, command)
        if isinstance(result, Drop):
            agent = command.agent if isinstance(command, FromAgent) else None
            if not isinstance(command, Deadline):  # stale deadlines are routine
                self._drop(nid, agent, result.reason, routine=result.reason == DUPLICATE)
            return None
        batch = Batch(events=[], deliveries=[], observed=[], nid=nid, generation=room.generation)
        events_subject = self._subjects.events(nid)
        for event in result:
            room.state = evolve(room.state, event)
            room.seq += 1
            stored = encode_event(event)
            batch.events.append(
                NewEvent(
                    stream_id=nid,
                    seq=room.seq,
                    event_id=self._event_ids.new(),
                    type=event_type(event),
                    data=stored,
                )
            )
            batch.observed.append(
                (events_subject, encode_committed_json(room.committed, room.seq, stored))
            )
            sent: object = None
            data = b""
            for agent_id, message in route(room.state, event):
                if message is not sent:  # a buyer message goes to many sellers: encode once
                    sent, data = message, encode(message)
                batch.deliveries.append((self._inbox(agent_id), data))
            self._schedule(nid, room.state, event)
        if room.state.phase == "ended":
            self._retire(nid)
        return batch

    def _retire(self, nid: UUID) -> None:
        """Remember an ended room among the last `keep_ended`; forget the oldest beyond."""
        self._ended.append(nid)
        while len(self._ended) > self.keep_ended:
            self.rooms.pop(self._ended.popleft(), None)

    def _schedule(self, nid: UUID, state: NegotiationState, event: Event) -> None:
        # Type checks, not isinstance(event, A | B): that builds a union per event.
        kind = type(event)
        if state.started is None or (kind is not RoundOpened and kind is not BuyerSaid):
            return
        phase: Phase = "buyer_turn" if kind is RoundOpened else "sellers_turn"
        self._phase_began(nid, state.round, phase, phase_timeout(state.started, phase))

    def _phase_resumed(self, nid: UUID, state: NegotiationState) -> None:
        # A room rebuilt from the log: its current phase gets the full round_timeout again.
        if state.started is not None and state.phase in ("buyer_turn", "sellers_turn"):
            timeout = phase_timeout(state.started, state.phase)
            self._phase_began(nid, state.round, state.phase, timeout)

    # -- rebuilt from the log ------------------------------------------------------------
    def restore(self, streams: Iterable[tuple[UUID, Sequence[StoredEvent]]]) -> list[UUID]:
        """Serve the open negotiations among these streams (each read whole, in seq order)
        from where their log stands. Returns their ids; streams that are not negotiations,
        ended ones and those that cannot be replayed are left out."""
        resumed: list[UUID] = []
        for nid, stored in streams:
            if not stored or stored[0].type != "negotiation.started":
                continue  # not a negotiation (an observer's companion stream)
            try:
                events = [decode_event(e.data) for e in stored]
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("broker.resume_skipped", negotiation_id=str(nid), reason=str(exc))
                continue
            if isinstance(events[-1], NegotiationEnded):
                continue
            state = replay(events)
            if state.started is None:
                log.warning("broker.resume_skipped", negotiation_id=str(nid), reason="no start")
                continue
            self.rooms[nid] = Room(state=state, seq=stored[-1].seq, committed=committed_prefix(nid))
            self._phase_resumed(nid, state)
            resumed.append(nid)
        return resumed

    def reload(self, nid: UUID, events: list[Event], seq: int) -> None:
        """Room `nid` as its log now stands (`events`, the last at `seq`), after the
        database refused a batch of it: what was decided on the refused state is stale."""
        room = self.rooms.get(nid)
        if room is None:
            return
        if not events:  # its opening was refused: there is no room
            self.rooms.pop(nid, None)
            log.warning("broker.room_not_opened", negotiation_id=str(nid))
            return
        room.state = replay(events)
        room.seq = seq
        room.generation += 1
        self._phase_resumed(nid, room.state)
        log.warning("broker.room_reloaded", negotiation_id=str(nid), seq=room.seq)

    def stale(self, batch: Batch) -> bool:
        """Whether a batch was decided on a room state the log never got (the database
        refused a batch of that room before it): never committed, never delivered."""
        if batch.nid is None:
            return False
        room = self.rooms.get(batch.nid)
        stale = batch.nid in self.broken or (
            room is not None and room.generation != batch.generation
        )
        if stale:
            self._drop(batch.nid, None, "decided on a state the database refused; re-read")
        return stale
