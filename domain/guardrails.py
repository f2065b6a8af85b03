"""Guardrails: the constraints that hold whatever a brain says (docs/DESIGN.md invariant 5).

The same checks run twice: in the agent (which asks its brain once to repair a bad
action, then falls back to a safe one) and in the broker (the last line of defence,
which overrides). Each check returns the violations it found; none means allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import msgspec

from mams.domain.bounds import GUARDRAIL_PRICE_LIMIT, BoundsError, check_price
from mams.domain.events import Offer
from mams.domain.messages import Accept, BuyerAction, Say, WalkAway
from mams.domain.money import fmt
from mams.domain.views import BuyerView

HOLD_TEXT = "Let me think about the offers so far."
PRICE_LIMIT = GUARDRAIL_PRICE_LIMIT  # one limit, stated in bounds


def _not_a_price(value: Decimal) -> str | None:
    """Why a price from a brain is unusable as money (NaN, infinite, absurdly large).

    Decoded wire messages accept any Decimal; such values must be caught here, before
    any comparison (NaN raises on `<`) or formatting (they cannot be quantized).
    """
    if not value.is_finite():
        return f"must be a finite number, got {value}"
    if abs(value) >= PRICE_LIMIT:
        return f"must be below {PRICE_LIMIT:,} in size, got {value}"
    return None


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    """One broken constraint: a stable rule name and a detail a model can act on."""

    rule: str
    detail: str


def seller_offer_violations(
    offer: Offer | None, *, least_price: Decimal, quantity: int
) -> list[Violation]:
    """Problems with a seller's offer: below its floor, wrong quantity, not positive."""
    if offer is None:
        return []
    problems: list[Violation] = []
    if (why := _not_a_price(offer.unit_price)) is not None:
        problems.append(Violation(rule="offer_not_a_price", detail=f"unit_price {why}"))
    elif offer.unit_price <= 0:
        problems.append(
            Violation(
                rule="offer_not_positive",
                detail=f"unit_price must be positive, got {offer.unit_price}",
            )
        )
    elif offer.unit_price < least_price:
        problems.append(
            Violation(
                rule="offer_below_floor",
                detail=f"offer {fmt(offer.unit_price)} is below your least acceptable price "
                f"{fmt(least_price)}; offer at least that",
            )
        )
    if offer.quantity != quantity:
        problems.append(
            Violation(
                rule="wrong_quantity",
                detail=f"offer is for {offer.quantity} units; the buyer asked for {quantity}",
            )
        )
    return problems


def buyer_action_violations(
    action: BuyerAction,
    *,
    max_price: Decimal,
    quantity: int,
    sellers: frozenset[str],
    offers: Mapping[str, Offer],
) -> list[Violation]:
    """Problems with a buyer action given its limits and the offers standing now.

    `sellers` are the agent ids in the room; `offers` each seller's standing offer.
    """
    problems: list[Violation] = []
    match action:
        case Accept(seller=seller, unit_price=price, quantity=qty):
            standing = offers.get(seller)
            if (why := _not_a_price(price)) is not None:
                problems.append(Violation(rule="accept_not_a_price", detail=f"unit_price {why}"))
            elif seller not in sellers:
                problems.append(
                    Violation(rule="unknown_seller", detail=f"no seller {seller!r} in this room")
                )
            elif standing is None:
                problems.append(
                    Violation(rule="phantom_accept", detail=f"{seller} has made no offer to accept")
                )
            elif standing.unit_price != price:
                problems.append(
                    Violation(
                        rule="phantom_accept",
                        detail=f"{seller}'s standing offer is {fmt(standing.unit_price)}, "
                        f"not {fmt(price)}",
                    )
                )
            if why is None and price > max_price:
                problems.append(
                    Violation(
                        rule="accept_above_max",
                        detail=f"{fmt(price)} is above your maximum {fmt(max_price)}",
                    )
                )
            if qty != quantity:
                problems.append(
                    Violation(
                        rule="wrong_quantity",
                        detail=f"accepting {qty} units; you need exactly {quantity}",
                    )
                )
        case Say(to=to, counter_price=counter):
            unknown = [s for s in to if s not in sellers]
            if unknown:
                problems.append(
                    Violation(
                        rule="unknown_seller",
                        detail=f"no seller {', '.join(map(repr, unknown))} in this room; "
                        f"sellers: {', '.join(sorted(sellers))}",
                    )
                )
            why = None if counter is None else _not_a_price(counter)
            if why is not None:
                problems.append(Violation(rule="counter_not_a_price", detail=f"counter {why}"))
            elif counter is not None and counter <= 0:
                problems.append(
                    Violation(
                        rule="counter_not_positive",
                        detail=f"counter price must be positive, got {counter}",
                    )
                )
            elif counter is not None and counter > max_price:
                problems.append(
                    Violation(
                        rule="counter_above_max",
                        detail=f"counter {fmt(counter)} is above your maximum {fmt(max_price)}",
                    )
                )
        case WalkAway():
            pass
    return problems


def buyer_turn_violations(view: BuyerView, action: BuyerAction) -> list[Violation]:
    """Problems with a buyer action in its turn of `view`: its limits and the standing
    offers (`buyer_action_violations`), then what the log cannot hold (`domain.bounds`),
    so an agent can repair it, and a person playing the buyer is told why."""
    problems = buyer_action_violations(
        action,
        max_price=view.max_price,
        quantity=view.quantity,
        sellers=frozenset(p.agent_id for p in view.sellers),
        offers=view.offers,
    )
    if problems:
        return problems
    price = action.unit_price if isinstance(action, Accept) else None
    if isinstance(action, Say):
        price = action.counter_price
    try:
        if price is not None:
            check_price(price, "price")
    except BoundsError as exc:
        return [Violation(rule="price_out_of_bounds", detail=str(exc))]
    return []


def seller_fallback(
    previous: Offer | None, *, selling_price: Decimal, quantity: int
) -> tuple[str, Offer]:
    """The safe seller action: repeat the standing offer, or the asking price."""
    price = previous.unit_price if previous is not None else selling_price
    return f"I can do {fmt(price)} per unit.", Offer(unit_price=price, quantity=quantity)


def buyer_fallback() -> Say:
    """The safe buyer action: commit to nothing, keep the room open."""
    return Say(text=HOLD_TEXT)
