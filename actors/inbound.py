"""What the broker reads on the agents' outboxes: from one bus message to one command.

The sender is taken from the subject (NATS permissions let only that agent publish
there), never from the payload; the payload is bounded, then decoded and checked against
`domain.bounds` (`decode_outbox`). A turn becomes a `FromAgent` command for its room; a
hello waits in the agent's `HelloGates` (rate-limited, merged with any that arrive
meanwhile) and becomes a `Control` without a message; an open_rooms request becomes a
`Control` carrying it. Anything else is `Dropped` with its reason, except an open_rooms
the decoder refused that still names its request_id: its sender waits for an answer, so
it is answered all the same (`Dropped.then`, a `Refusal`).

Pure bookkeeping: the clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import msgspec

from mams.actors.hellos import HelloGates
from mams.bus.subjects import SubjectError, Subjects
from mams.domain.messages import MAX_PAYLOAD, Hello, OpenRooms, decode_outbox
from mams.domain.negotiation import FromAgent

MAX_SENDERS = 100_000  # outbox subjects remembered (only valid ones; NATS permits them)


@dataclass(frozen=True, slots=True)
class Control:
    """A control message (hello, open rooms) from `agent` (taken from the subject). A
    hello waits in the broker's `HelloGates` (merged with any that arrive meanwhile) until
    its turn: `message` is None then."""

    agent: str
    message: OpenRooms | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """An open_rooms request refused before it could be decoded: answered all the same."""

    agent: str
    request_id: UUID
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message the broker does not act on, and why (logged and counted by the broker).
    `then`: the answer still owed to its sender, if any."""

    agent: str | None  # None when the subject names no agent of ours
    reason: str
    then: Refusal | None = None


Inbound = tuple[UUID, FromAgent] | Control | Refusal


class _RequestHead(msgspec.Struct, tag="open_rooms"):
    request_id: UUID


_request_head = msgspec.json.Decoder(_RequestHead)


def request_id_of(data: bytes) -> UUID | None:
    """The request_id of an open_rooms the full decoder refused, if it has one."""
    if b'"open_rooms"' not in data:
        return None
    try:
        return _request_head.decode(data).request_id
    except Exception:  # too deep, malformed, no id: nobody to answer
        return None


class Reader:
    """Parses what agents send. See the module docstring."""

    def __init__(self, subjects: Subjects, hellos: HelloGates) -> None:
        self.subjects = subjects
        self.hellos = hellos
        self._senders: dict[str, str] = {}  # outbox subject -> agent id

    def parse(self, subject: str, data: bytes, now: float) -> Inbound | Dropped | None:
        """The command a message on outbox `subject` makes, arriving at `now` (the
        hellos' clock). None for a hello merged into the agent's waiting one or dropped
        for its rate (counted in `HelloGates.dropped`)."""
        agent = self._senders.get(subject)
        if agent is None:
            try:
                agent = str(self.subjects.agent_of_outbox(subject))
            except SubjectError as exc:
                return Dropped(None, f"bad subject: {exc}")
            if len(self._senders) >= MAX_SENDERS:
                self._senders.clear()
            self._senders[subject] = agent  # parsed and validated once per agent
        if len(data) > MAX_PAYLOAD:
            return Dropped(agent, f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD}")
        try:
            turn = decode_outbox(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            request_id = request_id_of(data)
            # A request refused at the boundary is still answered: its sender waits.
            then = (
                None
                if request_id is None
                else Refusal(agent, request_id, f"malformed open_rooms: {exc}")
            )
            return Dropped(agent, f"malformed message: {exc}", then)
        if isinstance(turn, Hello):
            queued = self.hellos.offer(agent, turn, subject, now)
            return Control(agent=agent, message=None) if queued else None
        if isinstance(turn, OpenRooms):
            return Control(agent=agent, message=turn)
        return turn.negotiation_id, FromAgent(agent=agent, turn=turn)
