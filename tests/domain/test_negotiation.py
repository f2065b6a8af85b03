"""The negotiation state machine, driven through decide+evolve like the broker drives it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

import msgspec
import pytest

from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    GuardrailTripped,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    Outcome,
    ReasoningRecorded,
    RoundClosed,
    RoundOpened,
    SellerReplied,
)
from mams.domain.guardrails import HOLD_TEXT
from mams.domain.messages import Accept, GuardrailNote, Say, WalkAway
from mams.domain.negotiation import (
    INITIAL,
    Abort,
    Deadline,
    Drop,
    Open,
    decide,
    replay,
)

from .helpers import BUYER, D, Room, buyer_turn, seller_terms, seller_turn, started

ALL = ("alpha", "beta", "gamma")


def offers_round(room: Room, round_: int, prices: dict[str, str]) -> None:
    """Buyer says to all; each seller replies with its price."""
    room.ok(buyer_turn(round_, Say(text=f"round {round_}, your best?")))
    for seller, price in prices.items():
        room.ok(seller_turn(seller, round_, f"{seller} asks {price}", price))


# -- opening -----------------------------------------------------------------------------
def test_open_starts_round_one_with_the_buyer_to_move() -> None:
    opening = started()
    events = decide(INITIAL, Open(started=opening))
    assert events == [opening, RoundOpened(round=1, final=False)]
    state = replay(events)
    assert (state.phase, state.round, state.final) == ("buyer_turn", 1, False)
    assert state.seller_ids == frozenset(ALL)
    assert state.outcome is None


def test_open_twice_and_too_few_rounds_are_dropped() -> None:
    room = Room()
    assert room.send(Open(started=started())) == Drop("room already open")
    assert decide(INITIAL, Open(started=started(max_rounds=1))) == Drop(
        "max_rounds must be at least 2"
    )


def test_two_round_room_has_a_final_second_turn() -> None:
    room = Room(started(max_rounds=2))
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    assert room.events[-1] == RoundOpened(round=2, final=True)


# -- the full flow -------------------------------------------------------------------------
def test_round_closes_when_all_addressed_sellers_answered_then_next_round() -> None:
    room = Room()
    said = room.ok(buyer_turn(1, Say(text="Hi all, 2 cases please")))
    assert len(said) == 1
    assert isinstance(said[0], BuyerSaid)
    assert said[0].to == ALL
    assert room.state.phase == "sellers_turn"
    assert room.state.awaiting == frozenset(ALL)

    for seller, price in [("gamma", "14.00"), ("alpha", "12.00")]:
        [reply] = room.ok(seller_turn(seller, 1, f"{seller} here", price))
        assert isinstance(reply, SellerReplied)
        assert (reply.round, reply.seller, reply.text, reply.offer) == (
            1,
            seller,
            f"{seller} here",
            Offer(unit_price=D(price), quantity=2),
        )
    assert room.state.awaiting == frozenset({"beta"})
    assert room.state.phase == "sellers_turn"

    last = room.ok(seller_turn("beta", 1, "no price yet"))  # text only, no offer
    assert [type(e) for e in last] == [SellerReplied, RoundClosed, RoundOpened]
    assert last[1] == RoundClosed(round=1, reason="all_answered")
    assert last[2] == RoundOpened(round=2, final=False)
    after = room.state
    assert after.phase == "buyer_turn"
    assert room.state.round == 2
    assert dict(room.state.offers) == {
        "alpha": Offer(unit_price=D("12.00"), quantity=2),
        "gamma": Offer(unit_price=D("14.00"), quantity=2),
    }
    assert dict(room.state.first_asks) == {"alpha": D("12.00"), "gamma": D("14.00")}


def test_counter_to_some_sellers_only_awaits_those_in_room_order() -> None:
    room = Room()
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    [said] = room.ok(
        buyer_turn(
            2, Say(text="Can you do 10?", to=("gamma", "alpha", "alpha"), counter_price=D(10))
        )
    )
    assert isinstance(said, BuyerSaid)
    assert (said.round, said.to, said.text, said.counter_price) == (
        2,
        ("alpha", "gamma"),
        "Can you do 10?",
        D(10),
    )
    assert room.state.awaiting == frozenset({"alpha", "gamma"})
    # beta was not addressed: its reply is dropped.
    assert room.send(seller_turn("beta", 2, "me too", "11.00")) == Drop(
        "beta was not addressed this round or already answered"
    )
    room.ok(seller_turn("alpha", 2, "11 then", "11.00"))
    closing = room.ok(seller_turn("gamma", 2, "13.50", "13.50"))
    assert isinstance(closing[1], RoundClosed)
    # Standing offers are the latest; first asks keep the opening price.
    assert room.state.offers["alpha"].unit_price == D("11.00")
    assert room.state.offers["beta"].unit_price == D("13.00")
    assert room.state.first_asks["alpha"] == D("12.00")


def test_deal_accepts_a_standing_offer() -> None:
    room = Room()
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    events = room.ok(
        buyer_turn(2, Accept(seller="alpha", unit_price=D("12.00"), quantity=2, text="Deal!"))
    )
    assert [type(e) for e in events] == [DealClosed, NegotiationEnded]
    deal = events[0]
    assert isinstance(deal, DealClosed)
    assert (deal.seller, deal.unit_price, deal.quantity, deal.text, deal.round) == (
        "alpha",
        D("12.00"),
        2,
        "Deal!",
        2,
    )
    assert events[1] == NegotiationEnded(
        status="completed",
        outcome=Outcome(type="deal", rounds=2, seller="alpha", unit_price=D("12.00"), quantity=2),
    )
    assert room.state.phase == "ended"
    assert room.state.closing == deal
    assert room.state.outcome is not None
    assert room.state.outcome.total == D("24.00")


def test_accept_of_an_offer_from_an_earlier_round_still_standing() -> None:
    room = Room()
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    offers_round(room, 2, {"alpha": "11.50", "beta": "12.50", "gamma": "13.50"})
    room.ok(buyer_turn(3, Accept(seller="beta", unit_price=D("12.50"), quantity=2)))
    assert room.state.outcome == Outcome(
        type="deal", rounds=3, seller="beta", unit_price=D("12.50"), quantity=2
    )


def test_walk_away_ends_without_a_deal() -> None:
    room = Room()
    events = room.ok(buyer_turn(1, WalkAway(text="Too pricey for me.")))
    assert [type(e) for e in events] == [BuyerWalkedAway, NegotiationEnded]
    assert events[1] == NegotiationEnded(
        status="completed", outcome=Outcome(type="no_deal", rounds=1), reason="buyer walked away"
    )
    assert room.send(buyer_turn(1, Say(text="wait"))) == Drop("negotiation has ended")


def test_say_on_the_final_turn_ends_with_max_rounds() -> None:
    room = Room(started(max_rounds=2))
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    assert room.state.final is True
    events = room.ok(buyer_turn(2, Say(text="one more round?"), reasoning="stalling"))
    assert events[0] == ReasoningRecorded(agent=BUYER, round=2, text="stalling")
    assert events[1:] == [
        NegotiationEnded(
            status="completed",
            outcome=Outcome(type="max_rounds", rounds=2),
            reason="round limit reached on the buyer's final turn",
        )
    ]


def test_accept_on_the_final_turn_is_still_a_deal() -> None:
    room = Room(started(max_rounds=2))
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    room.ok(buyer_turn(2, Accept(seller="gamma", unit_price=D("14.00"), quantity=2)))
    assert room.state.outcome is not None
    assert room.state.outcome.type == "deal"


# -- deadlines -----------------------------------------------------------------------------
def test_sellers_deadline_closes_the_round_listing_who_did_not_answer() -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hello")))
    room.ok(seller_turn("beta", 1, "hi", "13.00"))
    events = room.ok(Deadline(round=1, phase="sellers_turn"))
    assert events == [
        RoundClosed(round=1, reason="deadline", unanswered=("alpha", "gamma")),
        RoundOpened(round=2, final=False),
    ]
    assert room.state.last_unanswered == ("alpha", "gamma")
    # The late reply is now for a round that is over.
    assert room.send(seller_turn("alpha", 1, "sorry, late", "12.00")) == Drop(
        "not your turn: round 2, phase buyer_turn"
    )


def test_buyer_timeout_closes_the_round() -> None:
    room = Room()
    events = room.ok(Deadline(round=1, phase="buyer_turn"))
    assert events == [
        RoundClosed(round=1, reason="buyer_timeout"),
        RoundOpened(round=2, final=False),
    ]


def test_deadlines_on_the_last_round_end_with_max_rounds() -> None:
    room = Room(started(max_rounds=2))
    room.ok(Deadline(round=1, phase="buyer_turn"))
    events = room.ok(Deadline(round=2, phase="buyer_turn"))
    assert events == [
        RoundClosed(round=2, reason="buyer_timeout"),
        NegotiationEnded(
            status="completed",
            outcome=Outcome(type="max_rounds", rounds=2),
            reason="round limit reached",
        ),
    ]


def test_stale_deadlines_are_dropped() -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hello")))
    assert room.send(Deadline(round=1, phase="buyer_turn")) == Drop("stale deadline")
    assert room.send(Deadline(round=2, phase="sellers_turn")) == Drop("stale deadline")
    room.ok(Deadline(round=1, phase="sellers_turn"))
    assert room.send(Deadline(round=1, phase="sellers_turn")) == Drop("stale deadline")
    room.ok(buyer_turn(2, WalkAway()))
    assert room.send(Deadline(round=2, phase="ended")) == Drop("no deadline applies in phase ended")


# -- drops ---------------------------------------------------------------------------------
def test_duplicate_message_ids_are_dropped() -> None:
    room = Room()
    mid = uuid.uuid4()
    room.ok(buyer_turn(1, Say(text="hello"), message_id=mid))
    assert room.send(buyer_turn(1, Say(text="hello"), message_id=mid)) == Drop(
        "duplicate message_id"
    )
    # A seller reusing the buyer's id, or its own, is a duplicate too.
    assert room.send(seller_turn("alpha", 1, message_id=mid)) == Drop("duplicate message_id")
    reply = uuid.uuid4()
    room.ok(seller_turn("alpha", 1, "hi", "12.00", message_id=reply))
    assert room.send(seller_turn("alpha", 1, "hi", "12.00", message_id=reply)) == Drop(
        "duplicate message_id"
    )


def test_wrong_turn_is_dropped() -> None:
    room = Room()
    assert room.send(seller_turn("alpha", 1, "unprompted", "10.00")) == Drop(
        "not your turn: round 1, phase buyer_turn"
    )
    assert room.send(buyer_turn(2, Say(text="future"))) == Drop(
        "not your turn: round 1, phase buyer_turn"
    )
    room.ok(buyer_turn(1, Say(text="hello")))
    assert room.send(buyer_turn(1, Say(text="again"))) == Drop(
        "not your turn: round 1, phase sellers_turn"
    )
    assert room.send(seller_turn("alpha", 2, "wrong round")) == Drop(
        "not your turn: round 1, phase sellers_turn"
    )


def test_seller_not_in_the_room_and_answering_twice_are_dropped() -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hello", to=("alpha", "beta"))))
    assert room.send(seller_turn("mallory", 1, "let me in", "1.00")) == Drop(
        "mallory is not a seller in this negotiation"
    )
    assert room.send(seller_turn("gamma", 1, "me too")) == Drop(
        "gamma was not addressed this round or already answered"
    )
    room.ok(seller_turn("alpha", 1, "12", "12.00"))
    assert room.send(seller_turn("alpha", 1, "11 actually", "11.00")) == Drop(
        "alpha was not addressed this round or already answered"
    )


def test_only_the_buyer_may_take_the_buyer_turn() -> None:
    room = Room()
    cmd = buyer_turn(1, WalkAway())
    impostor = msgspec.structs.replace(cmd, agent="alpha")
    assert room.send(impostor) == Drop("alpha is not the buyer of this negotiation")


def test_turns_before_open_are_dropped() -> None:
    assert decide(INITIAL, buyer_turn(1, WalkAway())) == Drop("no such negotiation")
    assert decide(INITIAL, seller_turn("alpha", 1)) == Drop("no such negotiation")
    assert decide(INITIAL, Abort(reason="x")) == Drop("no such negotiation")
    assert decide(INITIAL, Deadline(round=0, phase="idle")) == Drop(
        "no deadline applies in phase idle"
    )


def test_abort_ends_the_room_as_aborted_once() -> None:
    room = Room()
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    events = room.ok(Abort(reason="shutdown"))
    assert events == [
        NegotiationEnded(
            status="aborted", outcome=Outcome(type="no_deal", rounds=2), reason="shutdown"
        )
    ]
    assert room.send(Abort(reason="again")) == Drop("already ended")
    assert room.send(Deadline(round=2, phase="buyer_turn")) == Drop("stale deadline")


# -- guardrails at the broker ---------------------------------------------------------------
def overridden(events: Sequence[object]) -> list[tuple[str, str]]:
    return [
        (e.rule, e.detail)
        for e in events
        if isinstance(e, GuardrailTripped) and e.resolution == "overridden"
    ]


def standing_room() -> Room:
    """Round 3 (not final) with standing offers alpha 12, beta 15, gamma 13."""
    room = Room(started(max_rounds=5))
    offers_round(room, 1, {"alpha": "12.00", "beta": "15.00", "gamma": "13.00"})
    room.ok(buyer_turn(2, Say(text="lower?", to=("beta",))))
    room.ok(seller_turn("beta", 2, "15 is my price", "15.00"))
    return room


@pytest.mark.parametrize(
    ("action", "rules"),
    [
        (
            Accept(seller="beta", unit_price=D("15.00"), quantity=2),
            [("accept_above_max", "$15.00 is above your maximum $14.00")],
        ),
        (
            Accept(seller="alpha", unit_price=D("11.00"), quantity=2),
            [("phantom_accept", "alpha's standing offer is $12.00, not $11.00")],
        ),
        (
            Accept(seller="alpha", unit_price=D("12.00"), quantity=3),
            [("wrong_quantity", "accepting 3 units; you need exactly 2")],
        ),
        (
            Accept(seller="mallory", unit_price=D("10.00"), quantity=2),
            [("unknown_seller", "no seller 'mallory' in this room")],
        ),
        (
            Say(text="hi", to=("alpha", "@Beta")),
            [("unknown_seller", "no seller '@Beta' in this room; sellers: alpha, beta, gamma")],
        ),
        (
            Say(text="how about 15?", counter_price=D("14.01")),
            [("counter_above_max", "counter $14.01 is above your maximum $14.00")],
        ),
        (
            Say(text="free?", counter_price=D("0")),
            [("counter_not_positive", "counter price must be positive, got 0")],
        ),
        (
            Say(text="nan", counter_price=D("NaN")),
            [("counter_not_a_price", "counter must be a finite number, got NaN")],
        ),
        (
            Accept(seller="alpha", unit_price=D("Infinity"), quantity=2),
            [("accept_not_a_price", "unit_price must be a finite number, got Infinity")],
        ),
    ],
)
def test_buyer_guardrail_overrides_with_the_hold_fallback(
    action: Accept | Say, rules: list[tuple[str, str]]
) -> None:
    room = standing_room()
    events = room.ok(buyer_turn(3, action))
    assert overridden(events) == rules
    trips = [e for e in events if isinstance(e, GuardrailTripped)]
    assert all(t.agent == BUYER and t.round == 3 and t.brain == "baseline" for t in trips)
    assert trips[0].attempted == msgspec.json.encode(action).decode()
    [said] = [e for e in events if not isinstance(e, GuardrailTripped)]
    assert isinstance(said, BuyerSaid)
    assert (said.text, said.to, said.counter_price) == (HOLD_TEXT, ("alpha", "beta", "gamma"), None)
    assert room.state.phase == "sellers_turn"


def test_accept_of_an_offer_never_made() -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hi")))
    room.ok(seller_turn("alpha", 1, "let's talk"))  # no offer
    room.ok(Deadline(round=1, phase="sellers_turn"))
    events = room.ok(buyer_turn(2, Accept(seller="alpha", unit_price=D("9.00"), quantity=2)))
    assert overridden(events) == [("phantom_accept", "alpha has made no offer to accept")]
    assert not any(isinstance(e, DealClosed) for e in events)


def test_several_violations_are_all_recorded() -> None:
    room = standing_room()
    events = room.ok(buyer_turn(3, Accept(seller="beta", unit_price=D("16.00"), quantity=5)))
    assert [rule for rule, _ in overridden(events)] == [
        "phantom_accept",
        "accept_above_max",
        "wrong_quantity",
    ]


def test_guardrail_fallback_on_the_final_turn_ends_with_max_rounds() -> None:
    room = Room(started(max_rounds=2))
    offers_round(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"})
    events = room.ok(buyer_turn(2, Accept(seller="alpha", unit_price=D("1.00"), quantity=2)))
    assert [type(e) for e in events] == [GuardrailTripped, NegotiationEnded]
    assert room.state.outcome == Outcome(type="max_rounds", rounds=2)


@pytest.mark.parametrize(
    ("attempt", "fallback_price", "rules"),
    [
        (
            "8.99",
            "15.00",  # no standing offer yet: the asking price
            [
                (
                    "offer_below_floor",
                    "offer $8.99 is below your least acceptable price $9.00; offer at least that",
                )
            ],
        ),
        ("-1", "15.00", [("offer_not_positive", "unit_price must be positive, got -1")]),
        ("NaN", "15.00", [("offer_not_a_price", "unit_price must be a finite number, got NaN")]),
        (
            "1E+12",
            "15.00",
            [
                (
                    "offer_not_a_price",
                    "unit_price must be below 10,000,000,000 in size, got 1E+12",
                )
            ],
        ),
    ],
)
def test_seller_offer_below_floor_is_overridden_with_a_safe_offer(
    attempt: str, fallback_price: str, rules: list[tuple[str, str]]
) -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hi")))
    events = room.ok(seller_turn("alpha", 1, "cheap!", attempt))
    assert overridden(events) == rules
    reply = events[-1]
    assert isinstance(reply, SellerReplied)
    assert reply.offer == Offer(unit_price=D(fallback_price), quantity=2)
    assert reply.text == f"I can do ${fallback_price} per unit."
    assert reply.offer.unit_price >= D("9.00")


def test_seller_fallback_repeats_the_standing_offer_never_below_the_floor() -> None:
    room = Room()
    offers_round(room, 1, {"alpha": "10.00", "beta": "13.00", "gamma": "14.00"})
    room.ok(buyer_turn(2, Say(text="8?", counter_price=D(8))))
    events = room.ok(seller_turn("alpha", 2, "ok 8", "8.00", quantity=3))
    assert [rule for rule, _ in overridden(events)] == ["offer_below_floor", "wrong_quantity"]
    reply = events[-1]
    assert isinstance(reply, SellerReplied)
    assert reply.offer == Offer(unit_price=D("10.00"), quantity=2)
    assert room.state.offers["alpha"].unit_price >= D("9.00")


def test_seller_offer_at_exactly_the_floor_passes() -> None:
    room = Room()
    room.ok(buyer_turn(1, Say(text="hi")))
    [reply] = room.ok(seller_turn("alpha", 1, "9 is my floor", "9.00"))
    assert isinstance(reply, SellerReplied)
    assert reply.offer == Offer(unit_price=D("9.00"), quantity=2)


# -- agent-side records ----------------------------------------------------------------------
def test_agent_guardrail_notes_and_reasoning_become_private_events() -> None:
    room = Room()
    notes = (
        GuardrailNote(
            rule="accept_above_max", detail="too high", attempted="accept 15", resolution="repaired"
        ),
        GuardrailNote(rule="x" * 100, detail="d", attempted="a", resolution="fallback"),
        GuardrailNote(rule="odd", detail="d", attempted="a", resolution="overridden"),
    )
    events = room.ok(buyer_turn(1, Say(text="hi"), reasoning="start broad", notes=notes))
    assert events[:4] == [
        GuardrailTripped(
            agent=BUYER,
            round=1,
            rule="accept_above_max",
            detail="too high",
            attempted="accept 15",
            resolution="repaired",
            brain="baseline",
        ),
        GuardrailTripped(
            agent=BUYER,
            round=1,
            rule="x" * 80,
            detail="d",
            attempted="a",
            resolution="fallback",
            brain="baseline",
        ),
        # An agent cannot claim the broker's "overridden"; it is recorded as a fallback.
        GuardrailTripped(
            agent=BUYER,
            round=1,
            rule="odd",
            detail="d",
            attempted="a",
            resolution="fallback",
            brain="baseline",
        ),
        ReasoningRecorded(agent=BUYER, round=1, text="start broad"),
    ]
    assert isinstance(events[4], BuyerSaid)

    seller_events = room.ok(
        seller_turn(
            "beta",
            1,
            "13",
            "13.00",
            reasoning="anchor high",
            notes=(GuardrailNote(rule="r", detail="d", attempted="a", resolution="repaired"),),
        )
    )
    assert [type(e) for e in seller_events] == [
        GuardrailTripped,
        ReasoningRecorded,
        SellerReplied,
    ]
    assert seller_events[1] == ReasoningRecorded(agent="beta", round=1, text="anchor high")


def test_texts_are_truncated_to_the_wire_limit() -> None:
    room = Room()
    [said] = room.ok(buyer_turn(1, Say(text="x" * 5000)))
    assert isinstance(said, BuyerSaid)
    assert len(said.text) == 4000


def test_replay_of_the_live_events_gives_the_same_state() -> None:
    room = standing_room()
    room.ok(buyer_turn(3, Accept(seller="alpha", unit_price=D("12.00"), quantity=2)))
    assert replay(room.events) == room.state


def test_a_room_with_custom_floors() -> None:
    opening = started((seller_terms("solo", least="20.00", selling="30.00"),), max_price="25.00")
    room = Room(opening)
    room.ok(buyer_turn(1, Say(text="hi")))
    events = room.ok(seller_turn("solo", 1, "19?", "19.99"))
    assert [type(e) for e in events] == [GuardrailTripped, SellerReplied, RoundClosed, RoundOpened]
    assert room.state.offers["solo"] == Offer(unit_price=Decimal("30.00"), quantity=2)
    assert isinstance(room.events[0], NegotiationStarted)
