"""The negotiation state machine: `decide(state, command) -> events | Drop`, and
`evolve(state, event) -> state`. State is always a fold of events (`replay`).

Pure: no I/O, no clocks, no randomness. The broker feeds it commands (agents' turns,
deadlines, opening and aborting) and appends whatever events it returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec

from mams.domain.bounds import MAX_LLM_BODY
from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCall,
    LLMCalled,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    Outcome,
    ReasoningRecorded,
    RoundClosed,
    RoundOpened,
    SellerReplied,
    SellerTerms,
)
from mams.domain.guardrails import (
    buyer_action_violations,
    buyer_fallback,
    seller_fallback,
    seller_offer_violations,
)
from mams.domain.messages import (
    MAX_TEXT,
    Accept,
    BuyerTurn,
    Say,
    SellerTurn,
    WalkAway,
)

Phase = Literal["idle", "buyer_turn", "sellers_turn", "ended"]


# -- commands ------------------------------------------------------------------------------
class Open(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Open a room with these participants and private facts."""

    started: NegotiationStarted


class FromAgent(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A turn received from `agent` (taken from the subject, never the payload)."""

    agent: str
    turn: BuyerTurn | SellerTurn


class Deadline(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """The timer for `round` in `phase` ran out."""

    round: int
    phase: Phase


class Abort(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Stop the room now (shutdown, fatal error); recorded as aborted."""

    reason: str


Command = Open | FromAgent | Deadline | Abort


class Drop(msgspec.Struct, frozen=True, gc=False):
    """A command that changes nothing, with the reason it was dropped (for the log)."""

    reason: str


# -- state ---------------------------------------------------------------------------------
class NegotiationState(msgspec.Struct, frozen=True, gc=False):
    """Everything the broker knows of one room, derived from its events alone."""

    started: NegotiationStarted | None = None
    phase: Phase = "idle"
    round: int = 0
    final: bool = False
    awaiting: frozenset[str] = frozenset()
    offers: Mapping[str, Offer] = msgspec.field(default_factory=dict)
    first_asks: Mapping[str, Decimal] = msgspec.field(default_factory=dict)
    seen: frozenset[UUID] = frozenset()
    last_unanswered: tuple[str, ...] = ()
    last_said: BuyerSaid | None = None
    replies: tuple[SellerReplied, ...] = ()  # the answers to last_said, in commit order
    closing: DealClosed | BuyerWalkedAway | None = None
    ended: NegotiationEnded | None = None

    @property
    def agents(self) -> tuple[str, ...]:
        """Agent ids of everyone in the room: the buyer, then the sellers."""
        if self.started is None:
            return ()
        return (self.started.buyer.agent_id, *(s.agent_id for s in self.started.sellers))

    @property
    def seller_ids(self) -> frozenset[str]:
        """Agent ids of the sellers in the room."""
        return frozenset(s.agent_id for s in self.started.sellers) if self.started else frozenset()

    def seller(self, agent_id: str) -> SellerTerms | None:
        """A seller's private terms, or None if it is not in the room."""
        if self.started is None:
            return None
        for s in self.started.sellers:  # a plain loop: this runs for every seller reply
            if s.agent_id == agent_id:
                return s
        return None

    @property
    def outcome(self) -> Outcome | None:
        """The outcome once ended, else None."""
        return self.ended.outcome if self.ended else None


INITIAL = NegotiationState()


def evolve(state: NegotiationState, event: Event) -> NegotiationState:
    """Apply one event. Total and pure: replaying a stream always gives the same state."""
    r = msgspec.structs.replace
    match event:
        case NegotiationStarted():
            return r(state, started=event, phase="idle", round=0)
        case RoundOpened(round=n, final=final):
            return r(state, phase="buyer_turn", round=n, final=final, awaiting=frozenset())
        case BuyerSaid(to=to, message_id=mid):
            return r(
                state,
                phase="sellers_turn",
                awaiting=frozenset(to),
                seen=state.seen | {mid},
                last_said=event,
                replies=(),
            )
        case SellerReplied(seller=seller, offer=offer, message_id=mid):
            offers, asks = state.offers, state.first_asks
            if offer is not None:
                offers = {**offers, seller: offer}
                if seller not in asks:
                    asks = {**asks, seller: offer.unit_price}
            return r(
                state,
                awaiting=state.awaiting - {seller},
                offers=offers,
                first_asks=asks,
                seen=state.seen | {mid},
                replies=(*state.replies, event),
            )
        case RoundClosed(unanswered=unanswered):
            return r(state, awaiting=frozenset(), last_unanswered=unanswered)
        case DealClosed(message_id=mid) | BuyerWalkedAway(message_id=mid):
            return r(state, closing=event, seen=state.seen | {mid})
        case NegotiationEnded():
            return r(state, phase="ended", ended=event, awaiting=frozenset())
        case GuardrailTripped() | ReasoningRecorded() | LLMCalled():
            return state


def replay(events: Iterable[Event], state: NegotiationState = INITIAL) -> NegotiationState:
    """Fold a stream of events into its state."""
    for event in events:
        state = evolve(state, event)
    return state


def phase_timeout(started: NegotiationStarted, phase: Phase) -> float:
    """Seconds a phase of this room may last: the buyer's turn its `buyer_timeout` when
    set (a person playing), every other phase `round_timeout`."""
    if phase == "buyer_turn" and started.buyer_timeout is not None:
        return started.buyer_timeout
    return started.round_timeout


def decide(state: NegotiationState, command: Command) -> list[Event] | Drop:
    """The events a command produces in this state, or a Drop saying why it produced none."""
    match command:
        case Open(started=started):
            if state.started is not None:
                return Drop("room already open")
            if started.max_rounds < 2:
                return Drop("max_rounds must be at least 2")
            return [started, RoundOpened(round=1, final=False)]
        case Abort(reason=reason):
            if state.started is None:
                return Drop("no such negotiation")
            if state.phase == "ended":
                return Drop("already ended")
            return [_end(state, "no_deal", status="aborted", reason=reason)]
        case Deadline():
            return _deadline(state, command)
        case FromAgent(agent=agent, turn=turn):
            if isinstance(turn, BuyerTurn):
                return _buyer_turn(state, agent, turn)
            return _seller_turn(state, agent, turn)


def _end(
    state: NegotiationState,
    kind: Literal["deal", "no_deal", "max_rounds"],
    *,
    status: Literal["completed", "aborted"] = "completed",
    reason: str = "",
    deal: DealClosed | None = None,
) -> NegotiationEnded:
    outcome = Outcome(type=kind, rounds=state.round)
    if deal is not None:
        outcome = Outcome(
            type="deal",
            rounds=state.round,
            seller=deal.seller,
            unit_price=deal.unit_price,
            quantity=deal.quantity,
        )
    return NegotiationEnded(status=status, outcome=outcome, reason=reason)


def _advance(state: NegotiationState, closed: RoundClosed) -> list[Event]:
    """After a round closes: the next buyer turn, or the end at the round limit."""
    assert state.started is not None
    if state.round >= state.started.max_rounds:
        return [closed, _end(state, "max_rounds", reason="round limit reached")]
    nxt = state.round + 1
    return [closed, RoundOpened(round=nxt, final=nxt == state.started.max_rounds)]


def _deadline(state: NegotiationState, cmd: Deadline) -> list[Event] | Drop:
    if cmd.round != state.round or cmd.phase != state.phase:
        return Drop("stale deadline")
    if state.phase == "sellers_turn":
        unanswered = tuple(sorted(state.awaiting))
        return _advance(
            state, RoundClosed(round=state.round, reason="deadline", unanswered=unanswered)
        )
    if state.phase == "buyer_turn":
        return _advance(state, RoundClosed(round=state.round, reason="buyer_timeout"))
    return Drop(f"no deadline applies in phase {state.phase}")


DUPLICATE = "duplicate message_id"  # the Drop reason for a turn already folded


def _turn_checks(
    state: NegotiationState, turn: BuyerTurn | SellerTurn, phase: Phase
) -> Drop | None:
    if state.started is None:
        return Drop("no such negotiation")
    if turn.message_id in state.seen:
        return Drop(DUPLICATE)
    if state.phase == "ended":
        return Drop("negotiation has ended")
    if state.phase != phase or turn.round != state.round:
        return Drop(f"not your turn: round {state.round}, phase {state.phase}")
    return None


def _clean(text: str) -> str:
    """Agent text as the log can keep it: no NUL characters (PostgreSQL text and jsonb refuse
    them, so one would fail the whole group commit), at most MAX_TEXT characters."""
    return text.replace("\x00", "")[:MAX_TEXT]


def _scrub_call(call: LLMCall) -> LLMCall:
    # Bodies are kept whole (they are the audit record), but never with NULs or unbounded.
    def c(text: str) -> str:
        return text.replace("\x00", "")[:MAX_LLM_BODY]

    return msgspec.structs.replace(
        call,
        request=c(call.request),
        response=c(call.response),
        tool_input=c(call.tool_input),
        text=c(call.text),
        error=c(call.error),
        provider=_clean(call.provider)[:80],
        model=_clean(call.model)[:200],
        purpose=_clean(call.purpose)[:40],
        prompt_digest=_clean(call.prompt_digest)[:128],
    )


def _trace(turn: BuyerTurn | SellerTurn, agent: str, round_: int, brain: str) -> list[Event]:
    """Private records that precede an action: the model calls behind it, the agent's
    guardrail notes, and its reasoning."""
    reasoning, notes = turn.reasoning, turn.guardrails
    out: list[Event] = [
        LLMCalled(agent=agent, round=round_, call=_scrub_call(call)) for call in turn.llm_calls
    ]
    for note in notes:
        resolution = note.resolution if note.resolution in ("repaired", "fallback") else "fallback"
        out.append(
            GuardrailTripped(
                agent=agent,
                round=round_,
                rule=_clean(note.rule)[:80],
                detail=_clean(note.detail),
                attempted=_clean(note.attempted),
                resolution=resolution,  # type: ignore[arg-type]
                brain=brain,
            )
        )
    if reasoning:
        out.append(ReasoningRecorded(agent=agent, round=round_, text=_clean(reasoning)))
    return out


def _buyer_turn(state: NegotiationState, agent: str, turn: BuyerTurn) -> list[Event] | Drop:
    if (drop := _turn_checks(state, turn, "buyer_turn")) is not None:
        return drop
    assert state.started is not None
    buyer = state.started.buyer
    if agent != buyer.agent_id:
        return Drop(f"{agent} is not the buyer of this negotiation")
    events = _trace(turn, agent, state.round, buyer.brain)
    action = turn.action
    violations = buyer_action_violations(
        action,
        max_price=buyer.max_price,
        quantity=buyer.quantity,
        sellers=state.seller_ids,
        offers=state.offers,
    )
    if violations:
        events += [
            GuardrailTripped(
                agent=agent,
                round=state.round,
                rule=v.rule,
                detail=v.detail,
                attempted=msgspec.json.encode(action).decode(),
                resolution="overridden",
                brain=buyer.brain,
            )
            for v in violations
        ]
        action = buyer_fallback()
    mid = turn.message_id
    match action:
        case Accept(seller=seller, unit_price=price, quantity=qty, text=text):
            deal = DealClosed(
                round=state.round,
                message_id=mid,
                seller=seller,
                unit_price=price,
                quantity=qty,
                text=_clean(text),
            )
            return [*events, deal, _end(state, "deal", deal=deal)]
        case WalkAway(text=text):
            walk = BuyerWalkedAway(round=state.round, message_id=mid, text=_clean(text))
            return [*events, walk, _end(state, "no_deal", reason="buyer walked away")]
        case Say(text=text, to=to, counter_price=counter):
            if state.final:
                return [
                    *events,
                    _end(
                        state, "max_rounds", reason="round limit reached on the buyer's final turn"
                    ),
                ]
            order = [s.agent_id for s in state.started.sellers]
            recipients = tuple(s for s in order if s in to) if to else tuple(order)
            said = BuyerSaid(
                round=state.round,
                message_id=mid,
                to=recipients,
                text=_clean(text),
                counter_price=counter,
            )
            return [*events, said]


def _seller_turn(state: NegotiationState, agent: str, turn: SellerTurn) -> list[Event] | Drop:
    if (drop := _turn_checks(state, turn, "sellers_turn")) is not None:
        return drop
    terms = state.seller(agent)
    if terms is None:
        return Drop(f"{agent} is not a seller in this negotiation")
    if agent not in state.awaiting:
        return Drop(f"{agent} was not addressed this round or already answered")
    assert state.started is not None
    events = _trace(turn, agent, state.round, terms.brain)
    text, offer = _clean(turn.text), turn.offer
    quantity = state.started.buyer.quantity
    violations = seller_offer_violations(offer, least_price=terms.least_price, quantity=quantity)
    if violations:
        events += [
            GuardrailTripped(
                agent=agent,
                round=state.round,
                rule=v.rule,
                detail=v.detail,
                attempted=msgspec.json.encode(turn.offer).decode(),
                resolution="overridden",
                brain=terms.brain,
            )
            for v in violations
        ]
        text, offer = seller_fallback(
            state.offers.get(agent), selling_price=terms.selling_price, quantity=quantity
        )
    events.append(
        SellerReplied(
            round=state.round, message_id=turn.message_id, seller=agent, text=text, offer=offer
        )
    )
    if state.awaiting == {agent}:
        events += _advance(state, RoundClosed(round=state.round, reason="all_answered"))
    return events
