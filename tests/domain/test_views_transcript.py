"""Agent views folded from deliveries, the transcript of each event kind, stored formats."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from mams.domain.events import (
    EVENT_TYPES,
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCall,
    LLMCalled,
    NegotiationEnded,
    Offer,
    Outcome,
    ReasoningRecorded,
    RoundClosed,
    RoundOpened,
    SellerReplied,
    decode_event,
    encode_event,
    event_type,
)
from mams.domain.messages import (
    Accept,
    BuyerMessage,
    BuyerRoomOpened,
    InboxMessage,
    RoomClosed,
    Say,
    SellerMessage,
    SellerRoomOpened,
    TurnStarted,
    WalkAway,
    decode_inbox,
    encode,
)
from mams.domain.negotiation import INITIAL, Abort, Deadline, evolve
from mams.domain.transcript import Entry, describe_outcome, render
from mams.domain.views import (
    BuyerView,
    Line,
    SellerView,
    buyer_received,
    buyer_sent,
    open_buyer_view,
    open_seller_view,
    seller_received,
    seller_sent,
)
from mams.domain.visibility import route

from .helpers import BUYER, NID, Room, buyer_turn, seller_turn, started

D = Decimal


def deliveries_of(room: Room) -> list[tuple[str, InboxMessage]]:
    """Every delivery of a room's events, routed with the state after each event."""
    state = INITIAL
    out: list[tuple[str, InboxMessage]] = []
    for event in room.events:
        state = evolve(state, event)
        out += route(state, event)
    return out


def played_room() -> Room:
    """Two rounds: offers, a counter to alpha only, a deal with alpha."""
    room = Room(started(max_rounds=4))
    room.ok(buyer_turn(1, Say(text="Hi, 2 cases?")))
    room.ok(seller_turn("alpha", 1, "12 each", "12.00"))
    room.ok(seller_turn("beta", 1, "just browsing?"))
    room.ok(seller_turn("gamma", 1, "14 each", "14.00"))
    room.ok(buyer_turn(2, Say(text="10?", to=("alpha",), counter_price=D("10.00"))))
    room.ok(seller_turn("alpha", 2, "11 final", "11.00"))
    room.ok(buyer_turn(3, Accept(seller="alpha", unit_price=D("11.00"), quantity=2, text="Done")))
    return room


def fold_buyer(room: Room) -> BuyerView:
    view: BuyerView | None = None
    for recipient, message in deliveries_of(room):
        if recipient != BUYER:
            continue
        # Through the wire, as the agent would receive it.
        message = decode_inbox(encode(message))
        if isinstance(message, BuyerRoomOpened):
            view = open_buyer_view(message)
        else:
            assert view is not None
            assert isinstance(message, TurnStarted | SellerMessage | RoomClosed)
            view = buyer_received(view, message)
    assert view is not None
    return view


def fold_seller(room: Room, me: str) -> SellerView:
    view: SellerView | None = None
    for recipient, message in deliveries_of(room):
        if recipient != me:
            continue
        message = decode_inbox(encode(message))
        if isinstance(message, SellerRoomOpened):
            view = open_seller_view(message, me)
        else:
            assert view is not None
            assert isinstance(message, BuyerMessage | RoomClosed)
            view = seller_received(view, message)
    assert view is not None
    return view


# -- views -----------------------------------------------------------------------------------
def test_buyer_view_folds_offers_first_asks_history_and_the_close() -> None:
    view = fold_buyer(played_room())
    assert (view.item_name, view.quantity, view.min_price, view.max_price) == (
        "iPhone 15 case",
        2,
        D("8.00"),
        D("14.00"),
    )
    assert [p.handle for p in view.sellers] == ["@Alpha", "@Beta", "@Gamma"]
    assert (view.round, view.final, view.max_rounds, view.seed) == (3, False, 4, 7)
    assert dict(view.offers) == {
        "alpha": Offer(unit_price=D("11.00"), quantity=2),
        "gamma": Offer(unit_price=D("14.00"), quantity=2),
    }
    assert dict(view.first_asks) == {"alpha": D("12.00"), "gamma": D("14.00")}
    assert view.history == (
        Line(round=1, speaker="@Alpha", text="12 each", price=D("12.00")),
        Line(round=1, speaker="@Beta", text="just browsing?"),
        Line(round=1, speaker="@Gamma", text="14 each", price=D("14.00")),
        Line(round=2, speaker="@Alpha", text="11 final", price=D("11.00")),
    )
    assert view.closed is not None
    assert view.closed.deal is True
    assert view.closed.outcome == Outcome(
        type="deal", rounds=3, seller="alpha", unit_price=D("11.00"), quantity=2
    )
    assert view.handle("gamma") == "@Gamma"
    assert view.handle("nobody") == "nobody"


def test_buyer_view_remembers_its_own_counters() -> None:
    view = fold_buyer(played_room())
    view = buyer_sent(view, "all of you: 9?", (), D("9.00"))
    assert dict(view.my_counters) == {"alpha": D("9.00"), "beta": D("9.00"), "gamma": D("9.00")}
    view = buyer_sent(view, "gamma: 8.50?", ("gamma",), D("8.50"))
    view = buyer_sent(view, "no price", ("beta",), None)
    assert dict(view.my_counters) == {"alpha": D("9.00"), "beta": D("9.00"), "gamma": D("8.50")}
    assert view.history[-3:] == (
        Line(round=3, speaker="me", text="all of you: 9?", price=D("9.00")),
        Line(round=3, speaker="me", text="gamma: 8.50?", price=D("8.50"), to=("gamma",)),
        Line(round=3, speaker="me", text="no price", to=("beta",)),
    )


def test_turn_started_carries_the_unanswered_and_the_final_flag() -> None:
    room = Room(started(max_rounds=2))
    room.ok(buyer_turn(1, Say(text="hi")))
    room.ok(seller_turn("beta", 1, "13", "13.00"))
    room.ok(Deadline(round=1, phase="sellers_turn"))
    view = fold_buyer(room)
    assert (view.round, view.final, view.unanswered) == (2, True, ("alpha", "gamma"))


def test_winning_seller_view() -> None:
    view = fold_seller(played_room(), "alpha")
    assert (view.me, view.item_name, view.quantity, view.buyer.handle) == (
        "alpha",
        "iPhone 15 case",
        2,
        "@Buyer",
    )
    assert (view.terms.least_price, view.terms.cost_price) == (D("9.00"), D("5.00"))
    assert view.round == 2
    assert view.buyer_counter == D("10.00")
    assert view.history == (
        Line(round=1, speaker="@Buyer", text="Hi, 2 cases?"),
        Line(round=2, speaker="@Buyer", text="10?", price=D("10.00")),
    )
    assert view.closed is not None
    assert (view.closed.deal, view.closed.text) == (True, "Done")
    assert view.closed.outcome is not None
    assert view.closed.outcome.unit_price == D("11.00")


def test_a_losing_seller_sees_only_what_was_addressed_to_it() -> None:
    view = fold_seller(played_room(), "gamma")
    assert view.round == 1
    assert view.buyer_counter is None  # the counter of 10 went to alpha only
    assert view.history == (Line(round=1, speaker="@Buyer", text="Hi, 2 cases?"),)
    assert view.closed is not None
    assert (view.closed.deal, view.closed.text, view.closed.outcome) == (False, "", None)


def test_seller_sent_remembers_its_offer_and_keeps_it_on_text_only_replies() -> None:
    view = fold_seller(played_room(), "beta")
    offer = Offer(unit_price=D("13.00"), quantity=2)
    view = seller_sent(view, "13 then", offer)
    view = seller_sent(view, "still 13", None)
    assert view.my_offer == offer
    assert view.history[-2:] == (
        Line(round=1, speaker="me", text="13 then", price=D("13.00")),
        Line(round=1, speaker="me", text="still 13"),
    )


def test_walk_away_text_reaches_every_seller() -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hi")))
    room.ok(Deadline(round=1, phase="sellers_turn"))
    room.ok(buyer_turn(2, Say(text="hello?")))
    room.ok(Deadline(round=2, phase="sellers_turn"))
    room.ok(buyer_turn(3, WalkAway(text="Never mind, thanks.")))
    for seller in ("alpha", "beta", "gamma"):
        closed = fold_seller(room, seller).closed
        assert closed is not None
        assert (closed.deal, closed.text, closed.status) == (
            False,
            "Never mind, thanks.",
            "completed",
        )


# -- transcript --------------------------------------------------------------------------------
def test_transcript_of_a_whole_negotiation() -> None:
    room = played_room()
    room_events = list(room.events)
    lines = [e.plain() for e in render(room_events)]
    assert lines == [
        "Room opened: 2 x 'iPhone 15 case' with @Alpha, @Beta, @Gamma (up to 4 rounds)",
        "[r1] buyer's turn",
        "[r1] @Buyer -> all: Hi, 2 cases?",
        "[r1] @Alpha -> @Buyer: 12 each  [offer $12.00 x 2]",
        "[r1] @Beta -> @Buyer: just browsing?",
        "[r1] @Gamma -> @Buyer: 14 each  [offer $14.00 x 2]",
        "[r2] buyer's turn",
        "[r2] @Buyer -> @Alpha: 10?  [counter $10.00/unit]",
        "[r2] @Alpha -> @Buyer: 11 final  [offer $11.00 x 2]",
        "[r3] buyer's turn",
        "[r3] @Buyer -> @Alpha: Done  [accepts $11.00 x 2 = $22.00]",
        "[r3] DEAL with @Alpha at $11.00 x 2 after 3 round(s)",
    ]
    kinds = [e.kind for e in render(room_events)]
    assert kinds[:4] == ["open", "round", "buyer", "seller"]
    assert kinds[-2:] == ["deal", "end"]


def test_transcript_entries_for_notes_walks_guardrails_and_aborts() -> None:
    room = Room(started(max_rounds=3))
    room.ok(buyer_turn(1, Say(text="hi", to=("alpha", "beta")), reasoning="private thought"))
    room.ok(seller_turn("alpha", 1, "cheap", "1.00"))
    room.ok(Deadline(round=1, phase="sellers_turn"))
    room.ok(Deadline(round=2, phase="buyer_turn"))
    room.ok(buyer_turn(3, WalkAway(text="bye")))
    lines = [e.plain() for e in render(room.events)]
    assert lines[2:] == [
        "[r1] @Buyer -> @Alpha, @Beta: hi",
        "[r1] guardrail offer_below_floor (@Alpha, overridden): offer $1.00 is below your "
        "least acceptable price $9.00; offer at least that",
        "[r1] @Alpha -> @Buyer: I can do $15.00 per unit.  [offer $15.00 x 2]",
        "[r1] round deadline passed; no answer from @Beta",
        "[r2] buyer's turn",
        "[r2] buyer did not act before the deadline",
        "[r3] final turn",
        "[r3] @Buyer -> all: bye  [walks away]",
        "[r3] NO DEAL after 3 round(s)",
    ]
    # Reasoning is private: no entry mentions it.
    assert not any("private thought" in line for line in lines)

    aborted = Room()
    aborted.ok(Abort(reason="shutdown"))
    assert render(aborted.events)[-1] == Entry(
        "end", 1, "", "", "NO DEAL after 1 round(s) (aborted: shutdown)"
    )


def test_single_recipient_and_max_rounds_outcomes() -> None:
    assert describe_outcome(Outcome(type="max_rounds", rounds=5)) == (
        "ROUND LIMIT reached after 5 round(s), no deal"
    )
    assert describe_outcome(
        Outcome(type="deal", rounds=2, seller="alpha", unit_price=D("9.5"), quantity=3),
        lambda s: "@" + s.upper(),
    ) == ("DEAL with @ALPHA at $9.50 x 3 after 2 round(s)")
    assert Entry("note", 0, "", "", "x").plain() == "x"
    assert Entry("buyer", 2, "@B", "", "y").plain() == "[r2] @B: y"


def test_every_event_kind_renders_and_private_ones_are_marked_or_silent() -> None:
    mid = uuid.UUID(int=5)
    events: list[Event] = [
        started(),
        RoundOpened(round=1),
        BuyerSaid(round=1, message_id=mid, to=("gamma",), text="t"),
        SellerReplied(round=1, message_id=mid, seller="gamma", text="s"),
        RoundClosed(round=1, reason="all_answered"),
        GuardrailTripped(
            agent=BUYER, round=1, rule="r", detail="d", attempted="a", resolution="repaired"
        ),
        ReasoningRecorded(agent=BUYER, round=1, text="why"),
        LLMCalled(
            agent=BUYER,
            round=1,
            call=LLMCall(
                provider="p", model="m", purpose="decide", prompt_digest="x", request="{}"
            ),
        ),
        DealClosed(round=1, message_id=mid, seller="gamma", unit_price=D(9), quantity=2, text=""),
        BuyerWalkedAway(round=1, message_id=mid, text=""),
        NegotiationEnded(status="completed", outcome=Outcome(type="no_deal", rounds=1)),
    ]
    assert {type(e) for e in events} == set(EVENT_TYPES)
    lines = [e.plain() for e in render(events)]
    assert lines[2:] == [
        "[r1] @Buyer -> @Gamma: t",
        "[r1] @Gamma -> @Buyer: s",
        "[r1] guardrail r (@Buyer, repaired): d",
        "[r1] @Buyer -> @Gamma: [accepts $9.00 x 2 = $18.00]",
        "[r1] @Buyer -> all: [walks away]",
        "[r1] NO DEAL after 1 round(s)",
    ]


# -- stored formats: old logs keep decoding --------------------------------------------------
STORED = {
    "round.opened": b'{"type":"round.opened","round":2,"final":true}',
    "buyer.said": (
        b'{"type":"buyer.said","round":1,"message_id":"00000000-0000-0000-0000-000000000005",'
        b'"to":["alpha"],"text":"hi","counter_price":"10.50"}'
    ),
    "seller.replied": (
        b'{"type":"seller.replied","round":1,"message_id":"00000000-0000-0000-0000-000000000005",'
        b'"seller":"alpha","text":"ok","offer":{"unit_price":"12.00","quantity":2}}'
    ),
    "round.closed": b'{"type":"round.closed","round":1,"reason":"deadline","unanswered":["b"]}',
    "deal.closed": (
        b'{"type":"deal.closed","round":3,"message_id":"00000000-0000-0000-0000-000000000005",'
        b'"seller":"alpha","unit_price":"11.00","quantity":2,"text":"Done"}'
    ),
    "buyer.walked_away": (
        b'{"type":"buyer.walked_away","round":3,'
        b'"message_id":"00000000-0000-0000-0000-000000000005","text":"bye"}'
    ),
    "negotiation.ended": (
        b'{"type":"negotiation.ended","status":"completed","outcome":{"type":"deal","rounds":3,'
        b'"seller":"alpha","unit_price":"11.00","quantity":2},"reason":""}'
    ),
    "guardrail.tripped": (
        b'{"type":"guardrail.tripped","agent":"buyer","round":1,"rule":"r","detail":"d",'
        b'"attempted":"a","resolution":"overridden","brain":"baseline"}'
    ),
    "reasoning.recorded": b'{"type":"reasoning.recorded","agent":"buyer","round":1,"text":"t"}',
}


@pytest.mark.parametrize("tag", sorted(STORED))
def test_stored_event_bytes_decode_and_re_encode_identically(tag: str) -> None:
    """The log's format is a contract: renaming a field or tag would break old logs."""
    event = decode_event(STORED[tag])
    assert event_type(event) == tag
    assert encode_event(event) == STORED[tag]


def test_negotiation_started_round_trips_with_exact_decimals() -> None:
    opening = started()
    data = encode_event(opening)
    assert b'"type":"negotiation.started"' in data
    assert b'"least_price":"9.00"' in data  # decimals stored as exact strings
    assert decode_event(data) == opening
    assert str(NID).encode() in data


def test_event_tags_are_unique_and_stable() -> None:
    tags = [t.__struct_config__.tag for t in EVENT_TYPES]
    assert tags == [
        "negotiation.started",
        "round.opened",
        "buyer.said",
        "seller.replied",
        "round.closed",
        "deal.closed",
        "buyer.walked_away",
        "negotiation.ended",
        "guardrail.tripped",
        "reasoning.recorded",
        "llm.called",
    ]
