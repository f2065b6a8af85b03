"""Reading prices and agreement from people's words (sentences from the bundled dialogues)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mams.domain.human_text import Mention, Turn, closing, mark_echoes, mentions, stated_price

D = Decimal


@pytest.mark.parametrize(
    ("text", "listing", "expected"),
    [
        ("I can offer you a price of $1800 a month. ", 2495, "1800"),
        ("I can offer 140", 160, "140"),
        ("It's 18 bucks.", 18, "18"),
        ("Would you be willing to take 45$ for it.", 60, "45"),
        ("I'd be happy to give you 10k for it", 12300, "10000"),
        ("lowest he said he'd do 3.2k.", 3295, "3200"),
        ("ok, you have a deal at $10,000", 16000, "10000"),
        ("Hey, I'd like to buy this item. I offer 7.50 for it.", 15, "7.50"),
        # "$350" is what the seller paid, not what it asks.
        ("I bought this brand new for $350. I am willing to let it go at $200", 250, "200"),
        # Sizes, ages, times, model years and phone numbers are not prices.
        ("Will the chair work for someone who is under 6 feet tall?", 299, None),
        ("It's a 2009 model in excellent condition", 8000, None),
        ("Absolutely!  I can be there in 30 mins.", 60, None),
        ("Great. The phone number is 347-567-6785.", 18, None),
        ("Its around 360K Car runs with no issues", 3500, None),
        # Ambiguous: a range, an amount off, two proposals, a typo.
        ("i was lookng in the 1000-1500$ range", 2495, None),
        ("i can take $100 off", 1810, None),
        ("I could do 2150 or maybe 2100", 2495, None),
        ("That is over $500 of the listing price. I could do $2,00 at the lowest.", 2350, None),
    ],
)
def test_the_price_a_turn_proposes(text: str, listing: int, expected: str | None) -> None:
    cars = "2009" in text
    found = mentions(text, D(listing), years_are_common=cars)
    assert stated_price(found) == (D(expected) if expected else None)


def test_kinds_of_mention() -> None:
    assert mentions("I got the item for $80. Would you take $40?", D(50)) == [
        Mention(D("80.00"), "reference"),
        Mention(D("40.00"), "offer"),
    ]
    assert mentions("Knock 100 bucks off for a girl!", D(650)) == [Mention(D("100.00"), "relative")]


def test_a_repeat_of_the_other_sides_price_beside_a_refusal_is_no_offer() -> None:
    turns = [
        Turn("sys", "Would you consider $75 for it?"),
        Turn("usr", "$75 is too low, this phone is in perfect condition."),
        Turn("sys", "Ok how about $130"),
        Turn("usr", "The asking price is $150, but $135 is the lowest I will go."),
    ]
    found = mark_echoes(turns, [mentions(t.text, D(150)) for t in turns], D(150))
    assert [stated_price(f) for f in found] == [D(75), None, D(130), D(135)]


def agreement(*turns: tuple[str, str], listing: int = 100) -> tuple[int, str, Decimal] | None:
    ts = [Turn(s, t) for s, t in turns]  # type: ignore[arg-type]
    found = mark_echoes(ts, [mentions(t.text, D(listing)) for t in ts], D(listing))
    c = closing(ts, found)
    return None if c is None else (c.index, c.by, c.price)


def test_agreements_read_from_the_words() -> None:
    assert agreement(("sys", "would you take 105 instead?"), ("usr", "Yes that is fine")) == (
        1,
        "seller",
        D(105),
    )
    # A strong yes answers a price named turns before, small talk after it is dropped.
    assert agreement(
        ("usr", "Can we meet in the middle at 18?"),
        ("sys", "I'll do $17, that's my best offer."),
        ("usr", "Ok sounds good."),
        ("sys", "Thanks!"),
        listing=24,
    ) == (2, "seller", D(17))
    # "$40 it is" after the seller's 40, beside a "can't" that refuses nothing.
    assert agreement(
        ("usr", "but I can go for 40 if you pay in two 20s."),
        ("sys", "Haha, okay, I can't argue with that logic. $40 it is."),
        listing=50,
    ) == (1, "buyer", D(40))


@pytest.mark.parametrize(
    "turns",
    [
        # Refusals, however friendly.
        [("sys", "I will go up to $6500"), ("usr", "yeah no deal then. good luck")],
        [
            ("usr", "The listing price is the lowest I can go."),
            ("sys", "Ok sorry we couldnt agree"),
        ],
        [("usr", "Can you do $65?"), ("sys", "Guess we can't make a deal")],
        # A yes to a price nobody named, and a proposal that only sounds like a yes.
        [("sys", "love the car\ndeal")],
        [("usr", "How about $285?"), ("sys", "$250 and you have a deal.")],
        # Agreeing, then naming another price.
        [("usr", "Could you do $300?"), ("sys", "ok"), ("usr", "actually make it $320")],
    ],
)
def test_no_agreement(turns: list[tuple[str, str]]) -> None:
    assert agreement(*turns, listing=400) is None
