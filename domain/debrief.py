"""The debrief a person gets after playing the buyer: the facts that were hidden during
the negotiation (each seller's cost and floor, the zone where a deal was possible), where
their price fell in it, what they saved, and whether a better offer was on the table.

Built from the log's own analysis (`domain.analysis.analyze`), only once the room has
ended: during it, the buyer never sees a seller's cost or floor. Pure.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from mams.domain.analysis import NegotiationAnalysis
from mams.domain.events import NegotiationStarted
from mams.domain.money import fmt


class SellerRevealed(msgspec.Struct, frozen=True, kw_only=True):
    """One seller's private terms, revealed, and how it negotiated."""

    handle: str
    style: str
    cost_price: Decimal
    least_price: Decimal
    selling_price: Decimal
    first_ask: Decimal | None
    final_offer: Decimal | None


class Zone(msgspec.Struct, frozen=True, kw_only=True):
    """Where a deal was possible, per unit: from the lowest floor to the buyer's max."""

    floor: Decimal
    floor_seller: str
    ceiling: Decimal
    empty: bool
    note: str


class YourDeal(msgspec.Struct, frozen=True, kw_only=True):
    """The person's deal against the hidden facts.

    `position` is where the price fell in [the deal seller's floor, your max]: 0 at the
    floor (all the surplus yours), 1 at your max (all of it the seller's).
    """

    seller: str
    unit_price: Decimal
    quantity: int
    total: Decimal
    position: float | None
    saving_vs_first_ask: Decimal | None
    saving_vs_max: Decimal
    took_cheapest: bool | None
    cheapest_offer: Decimal | None
    overpaid_per_unit: Decimal | None
    above_lowest_floor_per_unit: Decimal | None


class Debrief(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a person learns once their room has ended."""

    negotiation_id: str
    item_name: str
    outcome: str
    rounds: int
    your_range: tuple[Decimal, Decimal]
    quantity: int
    zone: Zone
    sellers: tuple[SellerRevealed, ...]
    deal: YourDeal | None
    lesson: str
    review: str | None


def debrief(analysis: NegotiationAnalysis, started: NegotiationStarted) -> Debrief:
    """The debrief of an ended room, from its analysis and its opening (the costs)."""
    costs = {s.handle: s.cost_price for s in started.sellers}
    sellers = tuple(
        SellerRevealed(
            handle=s.handle,
            style=s.style,
            cost_price=costs.get(s.handle, Decimal(0)),
            least_price=s.least_price,
            selling_price=s.selling_price,
            first_ask=s.first_ask,
            final_offer=s.final_offer,
        )
        for s in analysis.sellers
    )
    surplus = analysis.surplus
    handles = {s.agent_id: s.handle for s in started.sellers}
    zone = Zone(
        floor=surplus.floor,
        floor_seller=handles.get(surplus.floor_seller, surplus.floor_seller),
        ceiling=surplus.ceiling,
        empty=surplus.empty,
        note=surplus.note,
    )
    deal = None
    if analysis.deal is not None:
        d, eff = analysis.deal, analysis.efficiency
        deal = YourDeal(
            seller=d.handle,
            unit_price=d.unit_price,
            quantity=d.quantity,
            total=d.total,
            position=surplus.seller_share,
            saving_vs_first_ask=d.saving_vs_first_ask,
            saving_vs_max=d.saving_vs_max,
            took_cheapest=eff.took_cheapest if eff is not None else None,
            cheapest_offer=eff.cheapest_offer if eff is not None else None,
            overpaid_per_unit=eff.overpaid_per_unit if eff is not None else None,
            above_lowest_floor_per_unit=eff.above_lowest_floor_per_unit
            if eff is not None
            else None,
        )
    return Debrief(
        negotiation_id=str(analysis.negotiation_id),
        item_name=analysis.item_name,
        outcome=analysis.outcome,
        rounds=analysis.rounds,
        your_range=(analysis.buyer_min_price, analysis.buyer_max_price),
        quantity=analysis.buyer_quantity,
        zone=zone,
        sellers=sellers,
        deal=deal,
        lesson=_lesson(analysis, deal, zone),
        review=analysis.review.text if analysis.review is not None else None,
    )


def _lesson(analysis: NegotiationAnalysis, deal: YourDeal | None, zone: Zone) -> str:
    """One sentence on what the hidden facts say about how it went."""
    if deal is None:
        if zone.empty:
            return (
                f"No deal was possible: the lowest floor ({fmt(zone.floor)} from "
                f"{zone.floor_seller}) was above your maximum ({fmt(zone.ceiling)})."
            )
        return (
            f"A deal was possible: {zone.floor_seller} would have gone as low as "
            f"{fmt(zone.floor)} per unit, within your maximum of {fmt(zone.ceiling)}."
        )
    parts = []
    if deal.position is not None:
        parts.append(
            f"your price kept {round((1 - deal.position) * 100)}% of the surplus between "
            f"{deal.seller}'s floor and your maximum"
        )
    if deal.took_cheapest is False and deal.cheapest_offer is not None:
        parts.append(f"a cheaper offer ({fmt(deal.cheapest_offer)}) was on the table")
    if deal.above_lowest_floor_per_unit:
        parts.append(
            f"the lowest floor in the room was {fmt(deal.above_lowest_floor_per_unit)} per "
            "unit below your price"
        )
    return ("Deal: " + "; ".join(parts) + ".") if parts else "Deal at the best price possible."
