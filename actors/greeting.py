"""What the broker sends an agent who says hello, and every agent when it re-sends all.

An agent says hello when it starts (or restarts) and then every few seconds as a
keepalive. It is answered with a `Welcome` naming its open rooms and, per room, its
catch-up (`domain.visibility.catch_up`):

- a first hello, or one asking for `catch_up`: each room's full catch-up (its room-opened
  view, the sellers' answers to the buyer's last message, the turn it owes);
- with `recap` as well: each room's recap (the lines it said or was told) after its view,
  read from the log (`recall`) once every commit lane has committed what was decided
  before the hello;
- a keepalive from an agent the broker knows: only the turns it has owed for at least
  `resend_after` seconds (`RESEND_AFTER`), in case a delivery was lost.

After a resume or a bus reconnect the broker re-sends every agent of every open room its
catch-up without waiting for a hello (`redelivery`).

Pure decisions on the rooms' states; `recall` alone reads the log. The broker does the
sends (through its committer, so nothing goes out ahead of its commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import structlog

from mams.domain.events import Event, decode_event
from mams.domain.messages import Hello, InboxMessage, Welcome
from mams.domain.negotiation import NegotiationState
from mams.domain.visibility import catch_up
from mams.storage.eventstore import EventStore

log = structlog.get_logger("mams.broker")

Send = tuple[str, InboxMessage]  # (agent id, message for its inbox)

# A keepalive hello (an agent the broker knows, saying it is still there) re-sends the
# turns the agent owes, in case a delivery was lost; only those owed for at least this
# many seconds. An agent behind on its turns (a model's latency, a burst of rooms) is
# still at the newer ones, and each re-sent turn it had already answered comes back as
# a duplicate answer: re-sending every owed turn on every keepalive made 4,000 resumed
# rooms cost a storm of repeats. Agents say a keepalive every 5 s (processes.REHELLO_EVERY),
# so a lost delivery is re-sent within about 15 s, well inside a round's deadline.
RESEND_AFTER = 10.0

# The events a recap is made of (`visibility.recap`): all `recall` reads of the log.
RECAP_TYPES = ("buyer.said", "seller.replied")


class Room(Protocol):
    """What a greeting reads of one of the broker's rooms."""

    @property
    def state(self) -> NegotiationState: ...

    @property
    def since(self) -> float:
        """When its current phase began (the broker's clock): its turns are owed since."""
        ...


@dataclass(frozen=True, slots=True)
class Greeting:
    """The answer to one hello. `messages` go out now; when `recap` is set (the agent
    asked for a recap and has open rooms), `messages` is only the welcome, and the rest
    is `recall(store, greeting)`, once the log holds everything decided before the hello."""

    agent: str
    rooms: tuple[UUID, ...]  # the agent's open rooms, as the welcome names them
    messages: list[Send]
    recap: dict[UUID, NegotiationState] | None = None


def greet(
    agent: str,
    hello: Hello,
    rooms: Mapping[UUID, Room],
    *,
    known: bool,
    now: float,
    resend_after: float = RESEND_AFTER,
) -> Greeting:
    """What to send `agent` for its `hello`, given every room of the broker (ended ones
    included) and whether the broker already `known` the agent (its hello is then a
    keepalive unless it asks for a catch-up). `now` is on the same clock as `Room.since`."""
    states = {
        nid: room.state
        for nid, room in rooms.items()
        if room.state.phase != "ended" and agent in room.state.agents
    }
    open_rooms = tuple(states)
    welcome: list[Send] = [(agent, Welcome(agent_id=agent, rooms=open_rooms))]
    if hello.catch_up and hello.recap and states:
        return Greeting(agent, open_rooms, welcome, recap=states)
    rejoin = hello.catch_up or not known  # a keepalive is enough only if we know it
    messages = list(welcome)
    for nid, state in states.items():
        if rejoin or now - rooms[nid].since >= resend_after:
            messages += catch_up(state, agent, rejoin=rejoin)
    return Greeting(agent, open_rooms, messages)


def recalled(greeting: Greeting, logged: Mapping[UUID, Iterable[Event]] | None) -> list[Send]:
    """A recap greeting in full: the welcome, then per room its catch-up with the recap
    of its `logged` lines (the `RECAP_TYPES` events of its stream); without recaps if the
    log could not be read (`logged` None)."""
    messages = list(greeting.messages)
    for nid, state in (greeting.recap or {}).items():
        room_log = None if logged is None else logged.get(nid, [])
        messages += catch_up(state, greeting.agent, rejoin=True, log=room_log)
    return messages


async def recall(store: EventStore, greeting: Greeting) -> list[Send]:
    """`recalled` with the lines read from the log, every room in one read. The recap is a
    courtesy: if the log cannot be read, the agent still gets its catch-up."""
    states = greeting.recap or {}
    logged: dict[UUID, list[Event]] | None = None
    try:  # only the lines a recap can hold
        stored = await store.read_streams(list(states), types=RECAP_TYPES)
        logged = {nid: [decode_event(e.data) for e in es] for nid, es in stored.items()}
    except Exception as exc:  # never hold the room for it
        log.warning("broker.recap_failed", agent=greeting.agent, rooms=len(states), error=repr(exc))
    return recalled(greeting, logged)


def redelivery(states: Iterable[NegotiationState]) -> list[Send]:
    """Every agent's full catch-up for each of these open rooms, without waiting for a
    hello: the rooms a broker resumed, or all after the bus reconnected."""
    messages: list[Send] = []
    for state in states:
        for agent in state.agents:  # none for a room whose opening was refused
            messages += catch_up(state, agent, rejoin=True)
    return messages
