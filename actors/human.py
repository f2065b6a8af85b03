"""A person as the buyer: a `BuyerBrain` whose decisions come from outside (the HTTP API's
`message` and `decide`, or `mams play`'s prompt) instead of a model.

The buyer's agent actor runs as for any brain: it folds what the broker delivers into its
view and, on its turn, asks the brain. `HumanBuyer.decide` then waits until the person
acts (`act`), having checked the action against the same guardrails the agent applies
(`domain.guardrails.buyer_turn_violations`): a person is told why an action is refused
(`ActionRefusedError`) instead of having it silently replaced. Everything else, visibility,
the log, deadlines (a person's turn has its own, `buyer_timeout`), is the one runtime's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from mams.actors.brains.base import BrainError, BuyerDecision
from mams.domain.errors import MamsError
from mams.domain.guardrails import Violation, buyer_turn_violations
from mams.domain.messages import BuyerAction, Say
from mams.domain.views import BuyerView

HUMAN_LABEL = "human"


class NotYourTurnError(MamsError):
    """The person acted while it is not the buyer's turn (sellers answering, or ended)."""


class ActionRefusedError(MamsError):
    """An action the guardrails refuse; `problems` say which rule and why."""

    def __init__(self, problems: list[Violation]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.rule}: {p.detail}" for p in problems))


@dataclass(slots=True)
class _Seat:
    """One room's seat at the table: the turn waiting for the person, if any."""

    view: BuyerView | None = None
    answer: MemoryObjectSendStream[BuyerDecision] | None = None
    turns: int = 0  # turns asked so far
    closed: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class HumanBuyer:
    """The brain of a buyer a person plays, in any number of rooms at once."""

    def __init__(self) -> None:
        self._seats: dict[UUID, _Seat] = {}

    @property
    def label(self) -> str:
        return HUMAN_LABEL

    def _seat(self, nid: UUID) -> _Seat:
        return self._seats.setdefault(nid, _Seat())

    # -- the agent's side ----------------------------------------------------------------
    async def decide(self, view: BuyerView) -> BuyerDecision:
        """Wait for the person's action on this turn."""
        seat = self._seat(view.negotiation_id)
        if seat.closed:
            raise BrainError("the room has closed")
        if seat.answer is not None:  # a turn its deadline took away: give it up
            seat.answer.close()
        send, receive = anyio.create_memory_object_stream[BuyerDecision](1)
        seat.view, seat.answer = view, send
        seat.turns += 1
        seat.touch()
        try:
            async with receive:
                return await receive.receive()
        except anyio.EndOfStream:
            raise BrainError("the room closed before the person acted") from None
        finally:
            send.close()
            if seat.answer is send:
                seat.view, seat.answer = None, None
            seat.touch()

    async def repair(
        self, view: BuyerView, rejected: BuyerDecision, problems: list[Violation]
    ) -> BuyerDecision:
        """Never needed (`act` refuses what the guardrails would); the agent's fallback
        takes over if it ever is."""
        raise BrainError("a person's action is checked before it is taken")

    # -- the person's side ---------------------------------------------------------------
    def waiting(self, nid: UUID) -> BuyerView | None:
        """The view of the turn waiting for the person in this room, or None."""
        seat = self._seats.get(nid)
        return seat.view if seat is not None else None

    def turns(self, nid: UUID) -> int:
        """How many turns this room has asked the person for so far."""
        seat = self._seats.get(nid)
        return seat.turns if seat is not None else 0

    async def next_turn(self, nid: UUID, *, after: int = 0) -> BuyerView | None:
        """The view of turn number `after` + 1 or later, once it waits for the person; None
        if the room closes first."""
        seat = self._seat(nid)
        while True:
            if seat.view is not None and seat.turns > after:
                return seat.view
            if seat.closed:
                return None
            await seat.changed.wait()

    def act(self, nid: UUID, action: BuyerAction, reasoning: str = "") -> None:
        """Take the person's action on the turn waiting in this room. Raises NotYourTurnError
        if none waits, ActionRefusedError if the guardrails refuse it (nothing is sent)."""
        seat = self._seats.get(nid)
        if seat is None or seat.view is None or seat.answer is None:
            raise NotYourTurnError("it is not the buyer's turn in this room")
        problems = buyer_turn_violations(seat.view, action)
        if seat.view.final and isinstance(action, Say):
            detail = "this is the final round: accept a standing offer or walk away"
            problems.append(Violation(rule="final_round", detail=detail))
        if problems:
            raise ActionRefusedError(problems)
        answer = seat.answer
        seat.view, seat.answer = None, None
        answer.send_nowait(BuyerDecision(action=action, reasoning=reasoning))
        answer.close()
        seat.touch()

    def close(self, nid: UUID) -> None:
        """The room has ended: a turn still waiting is given up, and waiters wake."""
        seat = self._seat(nid)
        seat.closed = True
        if seat.answer is not None:
            seat.answer.close()
        seat.view, seat.answer = None, None
        seat.touch()
