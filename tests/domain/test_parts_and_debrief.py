"""Parts of a scenario validated alone (what the HTTP API reads: one seller, the buyer's
needs) by the scenario files' own validator, and the debrief a person gets after playing
the buyer."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from mams.domain.analysis import analyze
from mams.domain.config import ScenarioError, parse_buyer, parse_seller
from mams.domain.debrief import debrief
from mams.domain.events import (
    BuyerSaid,
    DealClosed,
    Event,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    Outcome,
    RoundOpened,
    SellerReplied,
)
from mams.domain.opening import opening
from mams.domain.plan import PlanOptions
from tests.integration.scenarios import phone

SELLER = {
    "handle": "@CableKing",
    "style": "neutral",
    "customer_retention_weight": "0.5",
    "profit_maximization_weight": "0.5",
    "inventory": [
        {"item_name": "USB-C cable", "cost_price": 2, "selling_price": 10, "least_price": 5}
    ],
}


def test_a_seller_alone_is_checked_as_in_a_scenario_file_with_paths_from_its_root() -> None:
    seller = parse_seller(SELLER)
    assert seller.agent_id == "cableking"
    bad = {
        **SELLER,
        "style": "grumpy",
        "profit_maximization_weight": "0.6",
        "inventory": [
            {"item_name": "x", "cost_price": 1, "selling_price": 10, "least_price": 5},
            {"item_name": "X", "cost_price": 1, "selling_price": 10, "least_price": 5},
            {"item_name": "y", "cost_price": 6, "selling_price": 10, "least_price": 5},
        ],
        "colour": "red",
    }
    with pytest.raises(ScenarioError) as refused:
        parse_seller(bad)
    paths = {p.path for p in refused.value.problems}
    assert paths == {
        "colour",
        "style",
        "profit_maximization_weight",
        "inventory[1].item_name",
        "inventory[2].least_price",
    }


def test_the_buyer_alone_is_checked_as_in_a_scenario_file() -> None:
    buyer = parse_buyer(
        {"items": [{"item_name": "a", "quantity": 2, "min_price": 1, "max_price": 3}]}
    )
    assert buyer.handle == "@Buyer"
    with pytest.raises(ScenarioError) as refused:
        parse_buyer({"items": [{"item_name": "a", "quantity": 0, "min_price": 5, "max_price": 3}]})
    assert {p.path for p in refused.value.problems} == {"items[0].quantity", "items[0].max_price"}
    with pytest.raises(ScenarioError) as refused:
        parse_buyer({"items": []})
    assert [p.path for p in refused.value.problems] == ["items"]


def room() -> NegotiationStarted:
    scenario = phone()
    item = scenario.buyer_item("USB-C cable")
    return opening(scenario, uuid.uuid4(), item, PlanOptions(seed=1), {})


def test_the_debrief_reveals_every_floor_and_cost_and_where_the_price_fell() -> None:
    started = room()
    by_handle = {s.handle: s for s in started.sellers}
    quick = by_handle["@QuickTech"]
    mid = uuid.uuid4
    events: list[Event] = [
        started,
        RoundOpened(round=1),
        BuyerSaid(
            round=1, message_id=mid(), to=tuple(by_handle[h].agent_id for h in by_handle), text="?"
        ),
        *(
            SellerReplied(
                round=1,
                message_id=mid(),
                seller=s.agent_id,
                text="offer",
                offer=Offer(unit_price=s.selling_price, quantity=3),
            )
            for s in started.sellers
        ),
        DealClosed(
            round=2,
            message_id=mid(),
            seller=quick.agent_id,
            unit_price=quick.selling_price,
            quantity=3,
            text="deal",
        ),
        NegotiationEnded(
            status="completed",
            outcome=Outcome(
                type="deal",
                rounds=2,
                seller=quick.agent_id,
                unit_price=quick.selling_price,
                quantity=3,
            ),
        ),
    ]
    told = debrief(analyze(events), started)
    assert {s.handle: (s.cost_price, s.least_price) for s in told.sellers} == {
        s.handle: (s.cost_price, s.least_price) for s in started.sellers
    }
    assert told.deal is not None
    assert told.deal.unit_price == quick.selling_price
    assert told.deal.position is not None
    # At the asking price: the position is the asking price's place in [floor, max].
    buyer_max = started.buyer.max_price
    expected = (quick.selling_price - quick.least_price) / (buyer_max - quick.least_price)
    assert told.deal.position == pytest.approx(float(expected), abs=1e-4)
    cheapest = min(s.selling_price for s in started.sellers)
    assert told.deal.took_cheapest is (quick.selling_price == cheapest)
    assert told.zone.ceiling == buyer_max
    assert told.lesson.startswith("Deal")
    assert Decimal(told.deal.total) == quick.selling_price * 3


def test_a_player_sees_its_own_words_and_only_its_own() -> None:
    from mams.domain.negotiation import INITIAL, evolve
    from mams.domain.visibility import said_by, seen_by

    started = room()
    techmart, quick = (s.agent_id for s in started.sellers[:2])
    buyer = started.buyer.agent_id
    said = BuyerSaid(round=1, message_id=uuid.uuid4(), to=(techmart,), text="hi")
    reply = SellerReplied(round=1, message_id=uuid.uuid4(), seller=techmart, text="9.50")
    state = INITIAL
    for event in (started, RoundOpened(round=1), said):
        state = evolve(state, event)
    assert said_by(state, said) == buyer
    assert said in seen_by(state, said, buyer)  # the buyer's own words
    assert said not in seen_by(state, said, quick)  # not addressed: nothing
    assert [type(m).__name__ for m in seen_by(state, said, techmart)] == ["BuyerMessage"]
    state = evolve(state, reply)
    assert reply in seen_by(state, reply, techmart)  # its own reply
    assert seen_by(state, reply, quick) == []  # sellers never see each other
    assert reply not in seen_by(state, reply, buyer)  # the buyer gets the delivered message
    assert [type(m).__name__ for m in seen_by(state, reply, buyer)] == ["SellerMessage"]
