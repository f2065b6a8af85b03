"""Opening a room: the `negotiation.started` event for one buyer item of a scenario (and
back: the scenario a session's opening events show). Which rooms a study opens is
`domain.plan`'s."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from mams.domain.config import (
    BuyerItem,
    Problem,
    Scenario,
    ScenarioError,
    Stockists,
    item_key,
    parse_scenario,
    stock_index,
)
from mams.domain.events import BuyerTerms, NegotiationStarted, SellerTerms
from mams.domain.plan import PlanOptions


def opening(
    scenario: Scenario,
    session_id: UUID,
    item: BuyerItem,
    options: PlanOptions,
    brains: Mapping[str, str],
    negotiation_id: UUID | None = None,
    stockists: Stockists | None = None,
) -> NegotiationStarted:
    """The room for one buyer item, with every private fact the log keeps: the buyer's
    range, and each stocking seller's style, weights, cost, asking price and floor. Its
    round limit, deadline and seed are `options`' (for a room of a plan of several runs:
    `options.for_room(seed)`).

    `brains` maps agent ids to the label of the brain each runs (for the log);
    `stockists` (from `stock_index`) saves a search when opening many rooms.
    """
    buyer = scenario.buyer
    sellers: list[SellerTerms] = []
    if stockists is None:
        stockists = stock_index(scenario).get(item_key(item.item_name), ())
    for s, stock in stockists:
        sellers.append(
            SellerTerms(
                agent_id=s.agent_id,
                handle=s.handle,
                style=s.style,
                customer_retention_weight=s.customer_retention_weight,
                profit_maximization_weight=s.profit_maximization_weight,
                cost_price=stock.cost_price,
                selling_price=stock.selling_price,
                least_price=stock.least_price,
                brain=brains.get(s.agent_id, "unannounced"),
            )
        )
    return NegotiationStarted(
        negotiation_id=negotiation_id or uuid.uuid4(),
        session_id=session_id,
        item_name=item.item_name,
        buyer=BuyerTerms(
            agent_id=buyer.agent_id,
            handle=buyer.handle,
            quantity=item.quantity,
            min_price=item.min_price,
            max_price=item.max_price,
            brain=brains.get(buyer.agent_id, "unannounced"),
        ),
        sellers=tuple(sellers),
        max_rounds=options.max_rounds,
        round_timeout=options.round_timeout,
        seed=options.seed,
        buyer_timeout=options.buyer_timeout,
    )


def scenario_of(rooms: Sequence[NegotiationStarted], *, name: str) -> Scenario:
    """As much of a session's scenario as its rooms' opening events show: the buyer's items
    and, for each seller, its style, weights and terms for those items (the inverse of
    `opening`, for a session known only from its log, e.g. an imported archive). An item
    opened twice keeps its first room's terms. Raises ScenarioError if the rooms do not
    make a valid scenario (they all must share one buyer)."""
    if not rooms:
        raise ScenarioError([Problem("rooms", "no room to rebuild a scenario from")])
    items: dict[str, dict[str, str | int]] = {}
    sellers: dict[str, dict[str, Any]] = {}
    for room in rooms:
        key = item_key(room.item_name)
        if key in items:
            continue
        b = room.buyer
        items[key] = {
            "item_name": room.item_name,
            "quantity": b.quantity,
            "min_price": str(b.min_price),
            "max_price": str(b.max_price),
        }
        for s in room.sellers:
            seller = sellers.setdefault(
                s.agent_id,
                {
                    "handle": s.handle,
                    "style": s.style,
                    "customer_retention_weight": str(s.customer_retention_weight),
                    "profit_maximization_weight": str(s.profit_maximization_weight),
                    "inventory": [],
                },
            )
            seller["inventory"].append(
                {
                    "item_name": room.item_name,
                    "cost_price": str(s.cost_price),
                    "selling_price": str(s.selling_price),
                    "least_price": str(s.least_price),
                }
            )
    handles = {r.buyer.handle for r in rooms}
    if len(handles) > 1:
        problem = Problem("buyer.handle", f"the rooms have several buyers: {sorted(handles)}")
        raise ScenarioError([problem])
    raw = {
        "name": name,
        "buyer": {"handle": rooms[0].buyer.handle, "items": list(items.values())},
        "sellers": list(sellers.values()),
    }
    return parse_scenario(raw, source=name)
