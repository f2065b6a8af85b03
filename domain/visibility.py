"""The visibility policy: which agent receives what, for each committed event.

This is the one place that decides what crosses the opacity boundary (docs/DESIGN.md
invariant 1). A seller receives only messages addressed to it, its own terms, and
whether it got the deal; the buyer receives sellers' words and offers, never their
costs, floors, styles or weights. Private events (reasoning, guardrails) go to nobody.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCalled,
    NegotiationEnded,
    NegotiationStarted,
    ReasoningRecorded,
    RoundClosed,
    RoundOpened,
    SellerReplied,
)
from mams.domain.messages import (
    BuyerMessage,
    BuyerRoomOpened,
    OwnSellerTerms,
    Peer,
    Recap,
    RoomClosed,
    RoomMessage,
    SellerMessage,
    SellerRoomOpened,
    TurnStarted,
)
from mams.domain.negotiation import NegotiationState

Delivery = tuple[str, RoomMessage]

# The events carrying a participant's words: the buyer's message, a seller's reply, the
# buyer's deal and its walking away (a row each in the messages read model).
MessageEvent = BuyerSaid | SellerReplied | DealClosed | BuyerWalkedAway


def told(agents: tuple[str, ...], event: MessageEvent) -> tuple[str, ...]:
    """Who an event's words are for, by agent id: the sellers a buyer message names; the
    buyer, for a seller's reply (sellers never see each other's); the seller a deal is
    closed with; every seller of the room, when the buyer walks away. `agents` is the
    room's agent ids, the buyer first (`NegotiationState.agents`).

    The one rule: `route` delivers by it (a deal's or walk-away's words ride on each told
    seller's `RoomClosed`) and the messages read model records it as the recipients.
    """
    match event:
        case BuyerSaid(to=to):
            return to
        case SellerReplied():
            return agents[:1]
        case DealClosed(seller=seller):
            return (seller,)
        case BuyerWalkedAway():
            return agents[1:]


def said_by(state: NegotiationState, event: Event) -> str | None:
    """The agent whose own words an event records (the buyer's message, deal or walking
    away; a seller's reply), or None. Its words and whom it addressed are that agent's
    own: a view of the room for it (a replay, a stream) shows them beside what the broker
    delivered to it, and they carry nothing of anyone else's private terms."""
    started = state.started
    if started is None:
        return None
    match event:
        case BuyerSaid() | DealClosed() | BuyerWalkedAway():
            return started.buyer.agent_id
        case SellerReplied(seller=seller):
            return seller
    return None


def seen_by(state: NegotiationState, event: Event, agent: str) -> list[Event | RoomMessage]:
    """All one agent may see of one committed event (`state` after it): its own words
    (`said_by`), and what the broker delivers to it (`route`)."""
    own: list[Event | RoomMessage] = [event] if said_by(state, event) == agent else []
    return own + [msg for to, msg in route(state, event) if to == agent]


def route(state: NegotiationState, event: Event) -> list[Delivery]:
    """The deliveries an event causes, as (recipient agent id, message) pairs.

    `state` is the state *after* the event was applied.
    """
    started = state.started
    if started is None:
        return []
    nid = started.negotiation_id
    buyer = started.buyer.agent_id
    match event:
        case NegotiationStarted():
            return _room_opened(event)
        case RoundOpened(round=n, final=final):
            return [
                (
                    buyer,
                    TurnStarted(
                        negotiation_id=nid, round=n, final=final, unanswered=state.last_unanswered
                    ),
                )
            ]
        case BuyerSaid(round=n, message_id=mid, text=text, counter_price=counter):
            msg = BuyerMessage(
                negotiation_id=nid, round=n, message_id=mid, text=text, counter_price=counter
            )
            return [(seller, msg) for seller in told(state.agents, event)]
        case SellerReplied():
            return _seller_message(state, event)
        case NegotiationEnded():
            return _room_closed(state, event)
        case (
            RoundClosed()
            | DealClosed()
            | BuyerWalkedAway()
            | GuardrailTripped()
            | ReasoningRecorded()
            | LLMCalled()
        ):
            return []


def _seller_message(state: NegotiationState, event: SellerReplied) -> list[Delivery]:
    """A seller's reply, to the buyer: its words and offer under its handle."""
    assert state.started is not None
    message = _as_seller_message(state, event)
    return [] if message is None else [(a, message) for a in told(state.agents, event)]


def _as_seller_message(state: NegotiationState, event: SellerReplied) -> SellerMessage | None:
    """A seller's reply as the buyer reads it; None if the seller is not in the room."""
    assert state.started is not None
    terms = state.seller(event.seller)
    if terms is None:
        return None
    return SellerMessage(
        negotiation_id=state.started.negotiation_id,
        round=event.round,
        message_id=event.message_id,
        seller=Peer(agent_id=event.seller, handle=terms.handle),
        text=event.text,
        offer=event.offer,
    )


def _room_opened(event: NegotiationStarted) -> list[Delivery]:
    b = event.buyer
    out: list[Delivery] = [
        (
            b.agent_id,
            BuyerRoomOpened(
                negotiation_id=event.negotiation_id,
                item_name=event.item_name,
                quantity=b.quantity,
                min_price=b.min_price,
                max_price=b.max_price,
                sellers=tuple(Peer(agent_id=s.agent_id, handle=s.handle) for s in event.sellers),
                max_rounds=event.max_rounds,
                round_timeout=event.round_timeout,
                seed=event.seed,
                strategy=b.strategy,
                strategy_prompt=b.strategy_prompt,
                strategy_base=b.strategy_base,
            ),
        )
    ]
    buyer_peer = Peer(agent_id=b.agent_id, handle=b.handle)
    for s in event.sellers:
        terms = OwnSellerTerms(
            style=s.style,
            customer_retention_weight=s.customer_retention_weight,
            profit_maximization_weight=s.profit_maximization_weight,
            cost_price=s.cost_price,
            selling_price=s.selling_price,
            least_price=s.least_price,
            strategy=s.strategy,
            strategy_prompt=s.strategy_prompt,
            strategy_base=s.strategy_base,
        )
        out.append(
            (
                s.agent_id,
                SellerRoomOpened(
                    negotiation_id=event.negotiation_id,
                    item_name=event.item_name,
                    quantity=b.quantity,
                    buyer=buyer_peer,
                    handle=s.handle,
                    terms=terms,
                    max_rounds=event.max_rounds,
                    round_timeout=event.round_timeout,
                    seed=event.seed,
                ),
            )
        )
    return out


def _room_closed(state: NegotiationState, event: NegotiationEnded) -> list[Delivery]:
    assert state.started is not None
    nid = state.started.negotiation_id
    closing = state.closing
    told_closing = () if closing is None else told(state.agents, closing)
    out: list[Delivery] = [
        (
            state.started.buyer.agent_id,
            RoomClosed(
                negotiation_id=nid,
                status=event.status,
                deal=event.outcome.type == "deal",
                outcome=event.outcome,
            ),
        )
    ]
    for s in state.started.sellers:
        won = event.outcome.type == "deal" and event.outcome.seller == s.agent_id
        text = ""
        if closing is not None and s.agent_id in told_closing:
            text = closing.text
        out.append(
            (
                s.agent_id,
                RoomClosed(
                    negotiation_id=nid,
                    status=event.status,
                    deal=won,
                    text=text,
                    outcome=event.outcome if won else None,
                ),
            )
        )
    return out


def catch_up(
    state: NegotiationState, agent: str, *, rejoin: bool, log: Iterable[Event] | None = None
) -> list[Delivery]:
    """What an agent must be re-sent to take part in an open room; nothing for an ended
    room or one the agent is not in. Deliveries can repeat, so agents fold each message id
    once and act once per turn (PROTOCOL.md section 3).

    `rejoin` (the agent or the broker is new to the other): its room-opened view, the
    sellers' answers to the buyer's last message (to the buyer: they may have been
    committed but never published, by a broker that died in between), and the turn it owes
    now (the buyer's turn, or the buyer message a seller has not answered). Otherwise (a
    keepalive hello) only the owed turn, the buyer's with the answers it decides on.
    With the room's committed `log` (rejoin only), the room's `recap` for the agent goes
    right after its room-opened view.
    """
    started = state.started
    if started is None or state.phase == "ended":
        return []
    out = [(a, m) for a, m in _room_opened(started) if a == agent] if rejoin else []
    if rejoin and log is not None and out:
        out += recap(log, state, agent)
    if agent == started.buyer.agent_id:
        if rejoin or state.phase == "buyer_turn":
            for reply in state.replies:
                out += _seller_message(state, reply)
        if state.phase == "buyer_turn":
            turn = TurnStarted(
                negotiation_id=started.negotiation_id,
                round=state.round,
                final=state.final,
                unanswered=state.last_unanswered,
            )
            out.append((agent, turn))
    said = state.last_said
    if state.phase == "sellers_turn" and agent in state.awaiting and said is not None:
        out.append(
            (
                agent,
                BuyerMessage(
                    negotiation_id=started.negotiation_id,
                    round=said.round,
                    message_id=said.message_id,
                    text=said.text,
                    counter_price=said.counter_price,
                ),
            )
        )
    return out


def recap(events: Iterable[Event], state: NegotiationState, agent: str) -> list[Delivery]:
    """The lines of an open room that `agent` said or was told, as `Recap` messages, oldest
    first: what a restarted agent needs to rebuild its conversation before `catch_up`.

    `events` is the room's committed stream in seq order (or a prefix of it) and `state`
    the room now. Left out, so that nothing arrives twice: what `catch_up` re-sends (the
    answers to the buyer's last message; the buyer message a seller still owes an answer).
    The same policy as `route`: a seller recalls only the buyer messages addressed to it
    and its own replies; the buyer, its own messages and the sellers' replies. Nothing for
    an ended room or one the agent is not in.
    """
    started = state.started
    if started is None or state.phase == "ended" or agent not in state.agents:
        return []
    nid = started.negotiation_id
    buyer = started.buyer.agent_id
    resent = {r.message_id for r in state.replies} if agent == buyer else set()
    said = state.last_said
    owed = (
        said.message_id
        if said is not None and state.phase == "sellers_turn" and agent in state.awaiting
        else None
    )
    out: list[Delivery] = []
    asked: UUID | None = None  # the last buyer message to this seller: what it answers
    for event in events:
        match event:
            case BuyerSaid(round=n, message_id=mid, to=to, text=text, counter_price=counter):
                if agent != buyer and agent not in told(state.agents, event):
                    continue
                message = BuyerMessage(
                    negotiation_id=nid, round=n, message_id=mid, text=text, counter_price=counter
                )
                if agent == buyer:
                    line = Recap(negotiation_id=nid, message=message, mine=True, to=to)
                    out.append((agent, line))
                else:
                    asked = mid
                    if mid != owed:
                        out.append((agent, Recap(negotiation_id=nid, message=message, mine=False)))
            case SellerReplied(seller=seller, message_id=mid):
                mine = agent == seller
                reply = _as_seller_message(state, event)
                if reply is not None and (mine or (agent == buyer and mid not in resent)):
                    line = Recap(
                        negotiation_id=nid,
                        message=reply,
                        mine=mine,
                        replying_to=asked if mine else None,
                    )
                    out.append((agent, line))
            case _:
                pass
    return out
