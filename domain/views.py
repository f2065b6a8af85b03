"""Agent views: what one agent knows of a negotiation, folded from what it received.

A view is built only from inbox messages the broker delivered to this agent plus the
agent's own sent turns, so a brain given a view can never be handed what the agent may
not see (docs/DESIGN.md invariant 1). Brains decide from views.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec

from mams.domain.events import Offer
from mams.domain.messages import (
    BuyerMessage,
    BuyerRoomOpened,
    OwnSellerTerms,
    Peer,
    Recap,
    RoomClosed,
    SellerMessage,
    SellerRoomOpened,
    TurnStarted,
)

Speaker = Literal["buyer", "seller", "me"]


class Line(msgspec.Struct, frozen=True, gc=False):
    """One line of an agent's own conversation memory."""

    round: int
    speaker: str
    text: str
    price: Decimal | None = None
    to: tuple[str, ...] = ()


class BuyerView(msgspec.Struct, frozen=True, gc=False):
    """The buyer's knowledge of one room: its needs and limits, and what sellers said."""

    negotiation_id: UUID
    item_name: str
    quantity: int
    min_price: Decimal
    max_price: Decimal
    sellers: tuple[Peer, ...]
    max_rounds: int
    seed: int | None
    round: int = 0
    final: bool = False
    offers: Mapping[str, Offer] = msgspec.field(default_factory=dict)
    first_asks: Mapping[str, Decimal] = msgspec.field(default_factory=dict)
    my_counters: Mapping[str, Decimal] = msgspec.field(default_factory=dict)
    unanswered: tuple[str, ...] = ()
    history: tuple[Line, ...] = ()
    closed: RoomClosed | None = None
    # The strategy it plays, as its room-opened message says (`domain.strategies.resolve`).
    strategy: str = "default"
    strategy_prompt: str = ""
    strategy_base: str = ""

    def handle(self, agent_id: str) -> str:
        """A seller's handle by agent id (the id itself if unknown)."""
        return next((p.handle for p in self.sellers if p.agent_id == agent_id), agent_id)


class SellerView(msgspec.Struct, frozen=True, gc=False):
    """One seller's knowledge of one room: its own terms and what the buyer told it."""

    negotiation_id: UUID
    me: str
    item_name: str
    quantity: int
    buyer: Peer
    terms: OwnSellerTerms
    max_rounds: int
    seed: int | None
    round: int = 0
    my_offer: Offer | None = None
    handle: str = ""
    buyer_counter: Decimal | None = None
    history: tuple[Line, ...] = ()
    closed: RoomClosed | None = None


def open_buyer_view(msg: BuyerRoomOpened) -> BuyerView:
    """A fresh buyer view from the room-opened message."""
    return BuyerView(
        negotiation_id=msg.negotiation_id,
        item_name=msg.item_name,
        quantity=msg.quantity,
        min_price=msg.min_price,
        max_price=msg.max_price,
        sellers=msg.sellers,
        max_rounds=msg.max_rounds,
        seed=msg.seed,
        strategy=msg.strategy,
        strategy_prompt=msg.strategy_prompt,
        strategy_base=msg.strategy_base,
    )


def open_seller_view(msg: SellerRoomOpened, me: str) -> SellerView:
    """A fresh seller view from the room-opened message."""
    return SellerView(
        negotiation_id=msg.negotiation_id,
        me=me,
        item_name=msg.item_name,
        quantity=msg.quantity,
        buyer=msg.buyer,
        terms=msg.terms,
        max_rounds=msg.max_rounds,
        seed=msg.seed,
        handle=msg.handle or f"@{me}",
    )


def buyer_received(view: BuyerView, msg: TurnStarted | SellerMessage | RoomClosed) -> BuyerView:
    """Fold one delivered message into the buyer's view."""
    r = msgspec.structs.replace
    match msg:
        case TurnStarted(round=n, final=final, unanswered=unanswered):
            return r(view, round=n, final=final, unanswered=unanswered)
        case SellerMessage(seller=peer, offer=offer, text=text, round=n):
            offers, asks = view.offers, view.first_asks
            if offer is not None:
                offers = {**offers, peer.agent_id: offer}
                if peer.agent_id not in asks:
                    asks = {**asks, peer.agent_id: offer.unit_price}
            line = Line(
                round=n, speaker=peer.handle, text=text, price=offer.unit_price if offer else None
            )
            return r(view, offers=offers, first_asks=asks, history=(*view.history, line))
        case RoomClosed():
            return r(view, closed=msg)


def addressed(view: BuyerView, to: tuple[str, ...]) -> tuple[str, ...]:
    """Whom a buyer message reaches, as its line records it: the room's sellers among
    agent ids `to`, in room order, or empty for every seller (as `to` empty means; the
    broker resolves recipients the same way, so a recalled line reads the same)."""
    sellers = tuple(p.agent_id for p in view.sellers)
    reached = tuple(s for s in sellers if s in to)
    return () if reached == sellers else reached


def buyer_sent(
    view: BuyerView, text: str, to: tuple[str, ...], counter: Decimal | None
) -> BuyerView:
    """Remember what the buyer itself said (to agent ids `to`; empty means everyone)."""
    to = addressed(view, to) if to else ()
    counters = view.my_counters
    if counter is not None:
        targets = to or tuple(p.agent_id for p in view.sellers)
        counters = {**counters, **{t: counter for t in targets}}
    line = Line(round=view.round, speaker="me", text=text, price=counter, to=to)
    return msgspec.structs.replace(view, my_counters=counters, history=(*view.history, line))


def seller_received(view: SellerView, msg: BuyerMessage | RoomClosed) -> SellerView:
    """Fold one delivered message into a seller's view."""
    match msg:
        case BuyerMessage(round=n, text=text, counter_price=counter):
            line = Line(round=n, speaker=view.buyer.handle, text=text, price=counter)
            return msgspec.structs.replace(
                view, round=n, buyer_counter=counter, history=(*view.history, line)
            )
        case RoomClosed():
            return msgspec.structs.replace(view, closed=msg)


def seller_sent(view: SellerView, text: str, offer: Offer | None) -> SellerView:
    """Remember what the seller itself said and offered."""
    line = Line(
        round=view.round, speaker="me", text=text, price=offer.unit_price if offer else None
    )
    return msgspec.structs.replace(
        view, my_offer=offer or view.my_offer, history=(*view.history, line)
    )


def _in_order(before: tuple[Line, ...], after: tuple[Line, ...]) -> tuple[Line, ...]:
    # `after` is `before` plus lines at its end; move those to follow the last line of a
    # round not later than theirs (a recalled line may land after a newer live one).
    new = after[len(before) :]
    if not new or not before or before[-1].round <= new[0].round:
        return after
    at = len(before)
    while at > 0 and before[at - 1].round > new[0].round:
        at -= 1
    return (*before[:at], *new, *before[at:])


def buyer_recalled(view: BuyerView, recap: Recap) -> BuyerView:
    """Fold one recalled line (PROTOCOL.md: recap) into the buyer's view, in round order."""
    r = msgspec.structs.replace
    msg = recap.message
    if isinstance(msg, BuyerMessage):  # its own words
        said = buyer_sent(r(view, round=msg.round), msg.text, recap.to, msg.counter_price)
        folded = r(said, round=max(view.round, msg.round))
    else:
        folded = buyer_received(view, msg)
    return r(folded, history=_in_order(view.history, folded.history))


def seller_recalled(view: SellerView, recap: Recap) -> SellerView:
    """Fold one recalled line (PROTOCOL.md: recap) into a seller's view, in round order."""
    r = msgspec.structs.replace
    msg = recap.message
    if isinstance(msg, SellerMessage):  # its own reply
        said = seller_sent(r(view, round=msg.round), msg.text, msg.offer)
        folded = r(said, round=max(view.round, msg.round))
    else:
        heard = seller_received(view, msg)
        folded = r(heard, round=max(view.round, msg.round))
        if msg.round < view.round:  # an older message: the latest counter stands
            folded = r(folded, buyer_counter=view.buyer_counter)
    return r(folded, history=_in_order(view.history, folded.history))
