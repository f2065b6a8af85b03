"""Builders shared by the domain tests: a room's private facts and turns from agents."""

from __future__ import annotations

import uuid
from decimal import Decimal

from mams.domain.events import BuyerTerms, Event, NegotiationStarted, Offer, SellerTerms
from mams.domain.messages import BuyerAction, BuyerTurn, GuardrailNote, SellerTurn
from mams.domain.negotiation import (
    INITIAL,
    Command,
    Drop,
    FromAgent,
    NegotiationState,
    Open,
    decide,
    evolve,
)

D = Decimal
BUYER = "buyer"
NID = uuid.UUID("00000000-0000-4000-8000-000000000001")
SID = uuid.UUID("00000000-0000-4000-8000-000000000002")


def seller_terms(
    agent_id: str,
    *,
    cost: str = "5.00",
    least: str = "9.00",
    selling: str = "15.00",
    style: str = "neutral",
    retention: str = "0.5",
) -> SellerTerms:
    """One seller's private terms; the handle is the id capitalised with an `@`."""
    return SellerTerms(
        agent_id=agent_id,
        handle="@" + agent_id.capitalize(),
        style=style,
        customer_retention_weight=D(retention),
        profit_maximization_weight=1 - D(retention),
        cost_price=D(cost),
        selling_price=D(selling),
        least_price=D(least),
        brain="baseline",
    )


def started(
    sellers: tuple[SellerTerms, ...] | None = None,
    *,
    quantity: int = 2,
    min_price: str = "8.00",
    max_price: str = "14.00",
    max_rounds: int = 3,
) -> NegotiationStarted:
    """A room for one item with the buyer and the given sellers (three by default)."""
    if sellers is None:
        sellers = (seller_terms("alpha"), seller_terms("beta"), seller_terms("gamma"))
    return NegotiationStarted(
        negotiation_id=NID,
        session_id=SID,
        item_name="iPhone 15 case",
        buyer=BuyerTerms(
            agent_id=BUYER,
            handle="@Buyer",
            quantity=quantity,
            min_price=D(min_price),
            max_price=D(max_price),
            brain="baseline",
        ),
        sellers=sellers,
        max_rounds=max_rounds,
        round_timeout=5.0,
        seed=7,
    )


def buyer_turn(
    round_: int,
    action: BuyerAction,
    *,
    reasoning: str = "",
    notes: tuple[GuardrailNote, ...] = (),
    message_id: uuid.UUID | None = None,
) -> FromAgent:
    """The buyer's turn as the broker receives it."""
    return FromAgent(
        agent=BUYER,
        turn=BuyerTurn(
            negotiation_id=NID,
            round=round_,
            message_id=message_id or uuid.uuid4(),
            action=action,
            reasoning=reasoning,
            guardrails=notes,
        ),
    )


def seller_turn(
    agent: str,
    round_: int,
    text: str = "ok",
    price: str | Decimal | None = None,
    *,
    quantity: int = 2,
    reasoning: str = "",
    notes: tuple[GuardrailNote, ...] = (),
    message_id: uuid.UUID | None = None,
) -> FromAgent:
    """A seller's reply as the broker receives it, from subject identity `agent`."""
    offer = None if price is None else Offer(unit_price=D(price), quantity=quantity)
    return FromAgent(
        agent=agent,
        turn=SellerTurn(
            negotiation_id=NID,
            round=round_,
            message_id=message_id or uuid.uuid4(),
            text=text,
            offer=offer,
            reasoning=reasoning,
            guardrails=notes,
        ),
    )


class Room:
    """Drives decide+evolve like the broker does, keeping every committed event."""

    def __init__(self, opening: NegotiationStarted | None = None) -> None:
        self.state: NegotiationState = INITIAL
        self.events: list[Event] = []
        self.send(Open(started=opening or started()))

    def send(self, command: Command) -> list[Event] | Drop:
        """Decide, then apply and keep the events; returns what decide returned."""
        result = decide(self.state, command)
        if isinstance(result, Drop):
            return result
        for event in result:
            self.state = evolve(self.state, event)
            self.events.append(event)
        return list(result)

    def ok(self, command: Command) -> list[Event]:
        """Send a command that must not be dropped."""
        result = self.send(command)
        assert not isinstance(result, Drop), result
        return result
