"""Opening a room: the `negotiation.started` event for one buyer item of a scenario."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from mams.domain.config import BuyerItem, Scenario, Stockists, item_key, stock_index
from mams.domain.events import BuyerTerms, NegotiationStarted, SellerTerms


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """Per-room knobs: round limit, seed (baseline brains), round deadline in seconds."""

    max_rounds: int = 8
    seed: int | None = None
    round_timeout: float = 30.0


def opening(
    scenario: Scenario,
    session_id: UUID,
    item: BuyerItem,
    options: RoomOptions,
    brains: Mapping[str, str],
    negotiation_id: UUID | None = None,
    stockists: Stockists | None = None,
) -> NegotiationStarted:
    """The room for one buyer item, with every private fact the log keeps: the buyer's
    range, and each stocking seller's style, weights, cost, asking price and floor.

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
    )
