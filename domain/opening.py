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
from mams.domain.strategies import Side, Strategy, resolve


def _played(scenario: Scenario, side: Side, name: str) -> dict[str, str]:
    """The terms' strategy fields for the strategy `name` of `side`: its label, and for
    one the scenario defined, its prompt and its base (the log alone then reruns it)."""
    strategy = scenario.strategy(side, name)
    if strategy.builtin:
        return {"strategy": strategy.label}
    return {
        "strategy": strategy.label,
        "strategy_prompt": strategy.prompt,
        "strategy_base": strategy.base,
    }


def _defined(side: Side, label: str, prompt: str, base: str) -> tuple[str, Strategy | None]:
    """A room's strategy as a scenario names it, and its definition if the scenario's own."""
    if not base:
        return label, None
    strategy = resolve(side, label, prompt, base)
    return strategy.name, strategy


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
    range, and each stocking seller's style, weights, cost, asking price and floor; the
    strategy each plays (its label, and a scenario-defined one's prompt and base). Its
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
                **_played(scenario, "seller", s.strategy),
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
            **_played(scenario, "buyer", buyer.strategy),
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
    `opening`, for a session known only from its log, e.g. an imported archive), with the
    strategies each agent played (a scenario-defined one's definition from the terms). An
    item opened twice keeps its first room's terms. Raises ScenarioError if the rooms do not
    make a valid scenario (they all must share one buyer)."""
    if not rooms:
        raise ScenarioError([Problem("rooms", "no room to rebuild a scenario from")])
    items: dict[str, dict[str, str | int]] = {}
    sellers: dict[str, dict[str, Any]] = {}
    defined: dict[str, Strategy] = {}

    def play(side: Side, label: str, prompt: str, base: str) -> dict[str, str]:
        name, strategy = _defined(side, label, prompt, base)
        if strategy is not None:
            defined.setdefault(strategy.name, strategy)
        return {} if name == "default" else {"strategy": name}

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
                    **play("seller", s.strategy, s.strategy_prompt, s.strategy_base),
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
    b = rooms[0].buyer
    raw: dict[str, Any] = {
        "name": name,
        "buyer": {
            "handle": b.handle,
            "items": list(items.values()),
            **play("buyer", b.strategy, b.strategy_prompt, b.strategy_base),
        },
        "sellers": list(sellers.values()),
    }
    if defined:
        raw["strategies"] = {
            s.name: {"side": s.side, "version": s.version, "prompt": s.prompt, "base": s.base}
            for s in defined.values()
        }
    return parse_scenario(raw, source=name)
