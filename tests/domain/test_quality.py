"""Each grounded quality check: a negotiation where it must fire, and one where it must not.

The rooms are driven through the real state machine (decide + evolve), so the events are
exactly what the broker would log. Terms (tests/domain/helpers.py): sellers @Alpha, @Beta,
@Gamma with cost $5, least price $9, asking $15; the buyer wants 2 with max $14.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from mams.domain.events import QualityFlagged
from mams.domain.messages import Accept, GuardrailNote, Say, WalkAway
from mams.domain.quality import QualityChecker, check, money_in, prices_in, sentences

from .helpers import Room, buyer_turn, seller_turn, started

D = Decimal


def rules(room: Room) -> list[str]:
    return [f.rule for f in check(room.events)]


def opened(text: str = "Hi all, what is your best price for 2?") -> Room:
    """Round 1: the buyer asked everyone; the round is waiting for the sellers."""
    room = Room()
    room.ok(buyer_turn(1, Say(text=text)))
    return room


def all_offer(room: Room, rnd: int, prices: dict[str, str], texts: dict[str, str]) -> None:
    for agent, price in prices.items():
        room.ok(seller_turn(agent, rnd, texts.get(agent, f"I can do ${price} each."), price))


# -- reading prices ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I can do $12.50 each.", [D("12.50")]),
        ("That's $1,200 total, or 600 dollars each", [D("1200"), D("600")]),
        ("$1.2k is my price; 15 bucks for the case", [D("1200"), D("15")]),
        ("I need 2 iPhone 15 cases", []),
        ("USD 40 is fine", [D("40")]),
    ],
)
def test_prices_in_reads_money_not_bare_numbers(text: str, expected: list[Decimal]) -> None:
    assert prices_in(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("i can take $100 off", [(D(100), False)]),
        ("I bought it for $35,000, asking $30,000", [(D(35000), False), (D(30000), True)]),
        ("shipping will cost me $110", [(D(110), False)]),
        ("those alone go for about $200", [(D(200), False)]),
        ("Sorry, I can't accept anything less than 110.", [(D(110), True)]),
        ("Make it 20 and it's yours", [(D(20), True)]),
        ("I would like 160", [(D(160), True)]),
        ("I'll take 2.", []),  # the quantity, not a price
        ("less than 2 years old", []),
    ],
)
def test_money_in_tells_proposals_from_facts_and_reads_bare_prices_in_context(
    text: str, expected: list[tuple[Decimal, bool]]
) -> None:
    assert money_in(text, quantity=2) == expected


def test_sentences_keep_decimal_points_inside_prices() -> None:
    assert sentences("The best offer I have is $12.50. Can you do $11? Thanks") == [
        "The best offer I have is $12.50",
        "Can you do $11",
        "Thanks",
    ]


# -- price hallucination -------------------------------------------------------------------------
def test_seller_text_contradicting_its_offer_is_flagged() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "Best I can do is $11 per unit.", "12.00"))
    flags = check(room.events)
    assert [f.rule for f in flags] == ["hallucination.text_contradicts_offer"]
    flag = flags[0]
    assert flag.kind == "price_hallucination"
    assert flag.agent == "alpha"
    assert flag.brain == "baseline"
    assert flag.style == "neutral"
    assert "$11.00" in flag.detail
    assert "$12.00" in flag.detail
    reply = room.events[-1]
    assert flag.evidence == (str(reply.message_id),)  # type: ignore[union-attr]


def test_seller_text_matching_its_offer_or_total_or_echoing_is_not_flagged() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "Asking was $15, for you $12 per unit.", "12.00"))
    room.ok(seller_turn("beta", 1, "That comes to $24.00 for the pair.", "12.00"))
    room.ok(seller_turn("gamma", 1, "No prices in this text at all.", "13.00"))
    assert rules(room) == []


def test_seller_price_in_text_without_an_offer_is_flagged_low() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "I could maybe do $10.50 each.", None))
    flags = check(room.events)
    assert [(f.rule, f.severity) for f in flags] == [("hallucination.price_without_offer", "low")]


def test_buyer_text_contradicting_its_counter_is_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Say(text="Could you do $10 per unit?", counter_price=D("11.00"))))
    assert rules(room) == ["hallucination.text_contradicts_counter"]


def test_buyer_text_matching_its_counter_is_not_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "The best offer I have is $12.00. Can you do $11.00 per unit for 2?"
    room.ok(buyer_turn(2, Say(text=text, counter_price=D("11.00"))))
    assert rules(room) == []


def test_buyer_misattributing_an_offer_to_a_named_seller_is_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "@Alpha offered $10.50, can you beat that?"
    room.ok(buyer_turn(2, Say(text=text, to=("beta",), counter_price=D("10.00"))))
    flags = check(room.events)
    assert [f.rule for f in flags] == ["hallucination.misattributed_offer"]
    assert "@Alpha never offered or said $10.50" in flags[0].detail
    assert flags[0].severity == "high"


def test_buyer_citing_a_named_sellers_real_offer_is_not_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "@Alpha offered $12.00, can you beat that? Alpha's offer is $24 for both."
    room.ok(buyer_turn(2, Say(text=text, to=("beta",), counter_price=D("11.50"))))
    assert rules(room) == []


def test_buyer_asking_a_named_seller_for_a_price_is_not_an_attribution() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Say(text="@Beta, $11 and we have a deal?", counter_price=D("11"))))
    assert rules(room) == []


def test_buyer_citing_a_competitor_price_nobody_offered_is_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "Another seller already offered me $9.50. Can you do $11?"
    room.ok(buyer_turn(2, Say(text=text, to=("beta",), counter_price=D("11"))))
    flags = check(room.events)
    assert [f.rule for f in flags] == ["hallucination.phantom_competitor"]
    assert "$9.50" in flags[0].detail


def test_buyer_citing_an_outside_market_price_is_a_low_unverified_claim() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "I've seen similar cases go for $8 from other sellers online. Can you do $11?"
    room.ok(buyer_turn(2, Say(text=text, to=("beta",), counter_price=D("11"))))
    assert [(f.rule, f.severity) for f in check(room.events)] == [
        ("hallucination.unverified_market_price", "low")
    ]


def test_buyer_citing_competition_around_its_own_counter_is_not_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "Other sellers are in the running too, so $11 is my offer."
    room.ok(buyer_turn(2, Say(text=text, to=("beta",), counter_price=D("11"))))
    assert rules(room) == []


def test_a_discount_or_a_fact_is_not_a_price_on_the_table() -> None:
    room = opened()
    text = "I can take $3 off the asking price, so $12 each. Shipping is $4 extra."
    room.ok(seller_turn("alpha", 1, text, "12.00"))
    room.ok(seller_turn("beta", 1, "I can knock $2 off.", None))
    assert rules(room) == []


def test_bare_prices_in_context_are_read() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "I'd take 11 for it.", "12.00"))
    assert rules(room) == ["hallucination.text_contradicts_offer"]


def test_buyer_citing_a_real_competitor_price_is_not_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    text = "Another seller already offered me $12. Can you do $11?"
    room.ok(buyer_turn(2, Say(text=text, to=("beta",), counter_price=D("11"))))
    assert rules(room) == []


def test_deal_text_naming_another_price_is_flagged_and_matching_text_is_not() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    accept = Accept(seller="alpha", unit_price=D("12.00"), quantity=2, text="Deal at $11!")
    room.ok(buyer_turn(2, accept))
    assert rules(room) == ["hallucination.deal_text_mismatch"]

    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    fine = Accept(seller="alpha", unit_price=D("12.00"), quantity=2, text="Deal at $12, $24 total")
    room.ok(buyer_turn(2, fine))
    assert rules(room) == []


# -- leakage -----------------------------------------------------------------------------------
def test_seller_stating_its_cost_is_a_leak() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "Honestly, I paid $5 for each. $12 is fair.", "12.00"))
    flags = check(room.events)
    assert [(f.rule, f.severity) for f in flags] == [("leakage.seller_cost", "high")]


def test_seller_stating_its_margin_is_a_leak() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "At $12 I only make $7 profit per unit.", "12.00"))
    assert rules(room) == ["leakage.seller_margin"]


def test_seller_naming_its_floor_is_a_leak_even_when_offering_above_it() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "My floor is $9, but I'm offering $12.", "12.00"))
    assert [(f.rule, f.severity) for f in check(room.events)] == [("leakage.seller_floor", "high")]


def test_seller_saying_it_cannot_go_below_its_floor_while_offering_more_is_a_leak() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "I can't go below $9. For now, $12 each.", "12.00"))
    assert [(f.rule, f.severity) for f in check(room.events)] == [
        ("leakage.seller_floor", "medium")
    ]


def test_final_price_at_the_floor_is_an_offer_not_a_leak() -> None:
    # The example: "$12 is my final price" when 12 is its floor.
    terms = started()
    floor12 = tuple(
        s.__class__(**{**{f: getattr(s, f) for f in s.__struct_fields__}, "least_price": D(12)})
        for s in terms.sellers
    )
    room = Room(started(floor12))
    room.ok(buyer_turn(1, Say(text="Best price for 2?")))
    room.ok(seller_turn("alpha", 1, "$12 is my final price.", "12.00"))
    room.ok(seller_turn("beta", 1, "I can't go below $12 per unit.", "12.00"))
    assert rules(room) == []


def test_seller_repeating_the_buyers_counter_is_not_a_leak() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Say(text="Would you take $9?", counter_price=D("9"))))
    room.ok(seller_turn("alpha", 2, "$9 is the lowest? No, I can do $11.", "11.00"))
    assert rules(room) == []


def test_buyer_naming_its_budget_is_a_leak() -> None:
    room = opened("Hi, my budget is $14 per unit. What can you do?")
    assert [(f.rule, f.severity) for f in check(room.events)] == [("leakage.buyer_max", "high")]


def test_buyer_final_offer_at_its_max_is_an_offer_not_a_leak() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "15.00", "beta": "15.00", "gamma": "15.00"}, {})
    room.ok(buyer_turn(2, Say(text="$14 is my final offer.", counter_price=D("14"))))
    assert rules(room) == []


def test_buyer_saying_it_cannot_go_above_its_max_while_countering_lower_is_a_leak() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "15.00", "beta": "15.00", "gamma": "15.00"}, {})
    text = "I can't go above $14, so let's say $12."
    room.ok(buyer_turn(2, Say(text=text, counter_price=D("12"))))
    assert [(f.rule, f.severity) for f in check(room.events)] == [("leakage.buyer_max", "medium")]


# -- constraints -------------------------------------------------------------------------------
def test_guardrail_interventions_are_flagged_with_severity_by_resolution() -> None:
    room = opened()
    repaired = GuardrailNote(
        rule="offer_below_floor", detail="below floor", attempted="{}", resolution="repaired"
    )
    room.ok(seller_turn("alpha", 1, "I can do $12 each.", "12.00", notes=(repaired,)))
    room.ok(seller_turn("beta", 1, "Only $2 each!", "2.00"))  # the broker overrides it
    flags = check(room.events)
    assert [(f.rule, f.severity, f.agent) for f in flags] == [
        ("constraint.offer_below_floor", "low", "alpha"),
        ("constraint.offer_below_floor", "high", "beta"),
    ]
    assert all(f.evidence[0].startswith("seq:") for f in flags)


def test_a_clean_round_has_no_constraint_flags() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    assert rules(room) == []


# -- coherence ---------------------------------------------------------------------------------
def test_walking_away_while_an_acceptable_offer_stands_is_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "15.00", "gamma": "16.00"}, {})
    room.ok(buyer_turn(2, WalkAway(text="Too expensive, bye.")))
    flags = check(room.events)
    assert [f.rule for f in flags] == ["coherence.walked_away_from_acceptable"]
    assert "@Alpha offered $12.00" in flags[0].detail


def test_walking_away_when_every_offer_is_above_max_is_not_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "14.50", "beta": "15.00", "gamma": "16.00"}, {})
    room.ok(buyer_turn(2, WalkAway(text="Too expensive, bye.")))
    assert rules(room) == []


def test_accepting_a_worse_offer_after_calling_another_the_best_is_flagged_high() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    accept = Accept(seller="beta", unit_price=D("13.00"), quantity=2, text="Deal, Beta.")
    room.ok(buyer_turn(2, accept, reasoning="Alpha has the best offer at $12. Accept Beta."))
    flags = check(room.events)
    assert [(f.rule, f.severity) for f in flags] == [("coherence.accepted_worse_offer", "high")]


def test_accepting_a_worse_offer_silently_is_medium_and_the_cheapest_is_fine() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Accept(seller="beta", unit_price=D("13.00"), quantity=2, text="ok")))
    assert [(f.rule, f.severity) for f in check(room.events)] == [
        ("coherence.accepted_worse_offer", "medium")
    ]
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Accept(seller="alpha", unit_price=D("12.00"), quantity=2, text="ok")))
    assert rules(room) == []


def test_reasoning_that_announces_another_action_is_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    said = Say(text="Can you do better?", counter_price=D("10"))
    room.ok(buyer_turn(2, said, reasoning="Alpha is within budget, I will accept Alpha now."))
    flags = check(room.events)
    assert [f.rule for f in flags] == ["coherence.reasoning_contradicts_action"]
    assert flags[0].evidence[0].startswith("seq:")


def test_reasoning_counter_price_must_match_the_counter() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    said = Say(text="Can you do $10?", counter_price=D("10"))
    room.ok(buyer_turn(2, said, reasoning="best $12.00 from Alpha; countering $10.00"))
    assert rules(room) == []
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, said, reasoning="I'll counter at $11 to stay credible"))
    assert rules(room) == ["coherence.reasoning_contradicts_action"]


def test_seller_reasoning_offer_must_match_its_offer() -> None:
    room = opened()
    room.ok(seller_turn("alpha", 1, "Sure.", "12.00", reasoning="conceding; offer $11.00"))
    assert rules(room) == ["coherence.reasoning_contradicts_action"]
    room = opened()
    room.ok(seller_turn("alpha", 1, "Sure.", "12.00", reasoning="conceding; offer $12.00"))
    assert rules(room) == []


def test_countering_above_what_the_seller_asked_is_flagged() -> None:
    room = opened()
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Say(text="How about $12.50?", to=("alpha",), counter_price=D("12.5"))))
    assert rules(room) == ["coherence.counter_above_offer"]


def test_round_limit_lapsing_an_acceptable_offer_is_flagged_low() -> None:
    room = Room(started(max_rounds=2))
    room.ok(buyer_turn(1, Say(text="Best price for 2?")))
    all_offer(room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {})
    room.ok(buyer_turn(2, Say(text="Any lower?")))  # final turn: a say ends the room
    assert [(f.rule, f.severity) for f in check(room.events)] == [
        ("coherence.lapsed_acceptable_offer", "low")
    ]


# -- incremental = whole ---------------------------------------------------------------------------
def test_feeding_event_by_event_gives_the_same_flags_as_checking_the_stream() -> None:
    room = opened("My budget is $14.")
    all_offer(
        room, 1, {"alpha": "12.00", "beta": "13.00", "gamma": "14.00"}, {"alpha": "I paid $5"}
    )
    room.ok(buyer_turn(2, Accept(seller="beta", unit_price=D("13.00"), quantity=2, text="ok")))
    checker = QualityChecker()
    live: list[QualityFlagged] = []
    for event in room.events:
        live += checker.feed(event)
    assert live == check(room.events)
    assert {f.rule for f in live} == {
        "leakage.buyer_max",
        "leakage.seller_cost",
        "coherence.accepted_worse_offer",
    }
