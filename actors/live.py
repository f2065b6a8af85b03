"""Rooms a long-running front end runs (the HTTP API, `mams play`), each started through
`run_market`: the one runtime, with its plan, broker, agents, log and guardrails. A person
may take the buyer's seat (`actors.human.HumanBuyer`).

`Live.start` opens a study's rooms in the background and returns once they are known;
each `LiveRoom` keeps the events committed so far, with the state after each, so a
front end can answer "what happened since seq N" and wait for the next (`LiveRoom.after`)
without polling. Each viewer's own view of them is the domain's (`domain.visibility`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from mams.actors.human import HumanBuyer
from mams.actors.market import Connect, OnEvent, RoomResult, RunOptions, run_market
from mams.domain.config import BuyerItem, Scenario
from mams.domain.events import Event, NegotiationEnded
from mams.domain.negotiation import INITIAL, NegotiationState
from mams.storage.eventstore import EventStore
from mams.storage.leases import Leases

if TYPE_CHECKING:
    from mams.actors.voice import VoiceOptions

log = structlog.get_logger("mams.live")

KEEP_ENDED = 1_000  # ended rooms kept in memory (older ones are read from the log)


@dataclass(slots=True)
class LiveRoom:
    """One room a front end runs: what its log holds so far, and who sits as its buyer."""

    negotiation_id: UUID
    session_id: UUID
    item_name: str
    human: HumanBuyer | None = None
    # (seq, event, state after it), in commit order: seq 1 first.
    events: list[tuple[int, Event, NegotiationState]] = field(default_factory=list)
    state: NegotiationState = INITIAL
    failed: str | None = None  # why its run stopped before the room ended
    _changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def ended(self) -> bool:
        return self.state.phase == "ended" or self.failed is not None

    def touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def add(self, seq: int, event: Event, state: NegotiationState) -> None:
        if self.events and seq <= self.events[-1][0]:
            return  # a repeat (the observer may see a commit twice)
        self.events.append((seq, event, state))
        self.state = state
        self.touch()

    async def after(self, seq: int) -> list[tuple[int, Event, NegotiationState]]:
        """The events committed after `seq`, waiting for one if there is none yet; empty
        once the room has ended and nothing follows."""
        while True:
            newer = self.events[bisect_right(self.events, seq, key=_seq) :]
            if newer or self.ended:
                return newer
            await self._changed.wait()


def _seq(committed: tuple[int, Event, NegotiationState]) -> int:
    return committed[0]


class StartError(Exception):
    """A study that could not start (the plan, a provider); its cause is chained."""


class Live:
    """The rooms this process runs in the background, until it stops (then open rooms are
    recorded as aborted, as a cancelled `mams run` does)."""

    def __init__(
        self,
        connect: Connect,
        store: EventStore,
        leases: Leases | None = None,
        *,
        on_event: OnEvent | None = None,
        voice: Callable[[Scenario], VoiceOptions] | None = None,
    ) -> None:
        """`on_event`, if given, is told of each committed event of its rooms as the room
        gets it, before any waiter of `LiveRoom.after` runs (bench/api.py timestamps
        commits with it). `voice`, if given, gives each study's voice observer options
        (`actors.voice`): its sellers' lines are read aloud off the rounds' path."""
        self._voice = voice
        self._connect = connect
        self._store = store
        self._leases = leases
        self._on_event = on_event
        self._tg: TaskGroup | None = None
        self._rooms: OrderedDict[UUID, LiveRoom] = OrderedDict()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    @property
    def voiced(self) -> bool:
        """Whether its rooms' seller lines are read aloud."""
        return self._voice is not None

    def room(self, nid: UUID) -> LiveRoom | None:
        """A room this process runs (or ran recently), or None."""
        return self._rooms.get(nid)

    async def start(
        self,
        scenario: Scenario,
        session_id: UUID,
        items: Sequence[BuyerItem],
        options: RunOptions,
        *,
        human: HumanBuyer | None = None,
    ) -> list[LiveRoom]:
        """Start the rooms `domain.plan` plans for these items (with `human` in the buyer's
        seat, if given) and return them once known; they run on in the background. Raises
        StartError (its cause chained: PlanError, ProviderConfigError...) if they cannot."""
        if self._tg is None:
            raise RuntimeError("Live.run is not running")
        opened = anyio.Event()
        rooms: list[LiveRoom] = []
        failure: list[BaseException] = []

        def on_opened(results: list[RoomResult]) -> None:
            for r in results:
                room = LiveRoom(r.negotiation_id, session_id, r.item_name, human)
                self._rooms[r.negotiation_id] = room
                rooms.append(room)
            self._forget_ended()
            opened.set()

        def on_event(nid: UUID, seq: int, event: Event, state: NegotiationState) -> None:
            room = self._rooms.get(nid)
            if room is None:
                return
            room.add(seq, event, state)
            if self._on_event is not None:
                self._on_event(nid, seq, event, state)
            if isinstance(event, NegotiationEnded) and human is not None:
                human.close(nid)

        async def study() -> None:
            try:
                await run_market(
                    scenario,
                    session_id,
                    items,
                    connect=self._connect,
                    store=self._store,
                    options=options,
                    on_event=on_event,
                    on_opened=on_opened,
                    leases=self._leases,
                    brains={scenario.buyer.agent_id: human} if human is not None else None,
                    voice=self._voice(scenario) if self._voice is not None else None,
                )
            except Exception as exc:  # reported to the caller, or on the rooms
                failure.append(exc)
                log.warning("live.study_failed", session_id=str(session_id), error=repr(exc))
            finally:
                for room in rooms:
                    if not room.ended:
                        room.failed = "the run stopped before the room ended"
                    if human is not None:
                        human.close(room.negotiation_id)
                    room.touch()
                opened.set()

        self._tg.start_soon(study)
        await opened.wait()
        if not rooms:
            cause = failure[0] if failure else None
            raise StartError(str(cause) if cause else "no room opened") from cause
        return rooms

    def _forget_ended(self) -> None:
        ended = [nid for nid, room in self._rooms.items() if room.ended]
        for nid in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self._rooms[nid]
