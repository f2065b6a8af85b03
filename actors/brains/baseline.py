"""Baseline brains: rule-based negotiators, the default when no LLM is configured.

Not an LLM and always labelled so ("baseline (no LLM)"). Deterministic for a seed: the
same seed gives the same transcript. Sellers concede toward their floor at a pace set
by their weights (retention-minded sellers concede faster) and word replies by style;
the buyer opens to all, compares offers, counters along a rising target and accepts
inside its range, or walks away on its final turn.

Each plays its strategy's rule variant (`domain.strategies`: `BuyerRules`,
`SellerRules`, from the strategy its room's opening names); the `default` variant is the
behaviour above, draw for draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache

from mams.actors.brains.base import BASELINE_LABEL, BuyerDecision, SellerDecision
from mams.domain.events import Offer
from mams.domain.guardrails import Violation, buyer_fallback
from mams.domain.messages import Accept, Say, WalkAway
from mams.domain.money import cents, cents_down, cents_up, fmt
from mams.domain.strategies import BuyerRules, SellerRules, Side, resolve
from mams.domain.views import BuyerView, SellerView


@lru_cache(maxsize=256)
def _rules(side: Side, label: str, base: str) -> BuyerRules | SellerRules:
    return resolve(side, label, "", base).rules


def buyer_rules(view: BuyerView) -> BuyerRules:
    """The rule variant of the strategy the buyer plays in this room."""
    rules = _rules("buyer", view.strategy, view.strategy_base)
    assert isinstance(rules, BuyerRules)
    return rules


def seller_rules(view: SellerView) -> SellerRules:
    """The rule variant of the strategy a seller plays in this room."""
    rules = _rules("seller", view.terms.strategy, view.terms.strategy_base)
    assert isinstance(rules, SellerRules)
    return rules


class _Draws:
    """The few deterministic draws one decision makes, from a hash of its key (seed, role,
    agent, item, round). Seeding random.Random from a string cost 5.5 us a decision (the
    Mersenne Twister's whole state); this costs 0.7 us."""

    __slots__ = ("_at", "_bits")

    def __init__(self, key: str) -> None:
        self._bits = hashlib.blake2b(key.encode(), digest_size=32).digest()
        self._at = 0

    def _next(self) -> int:
        at = self._at
        self._at = (at + 8) % 32
        return int.from_bytes(self._bits[at : at + 8])

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high], both included."""
        return low + self._next() % (high - low + 1)

    def choice(self, options: Sequence[str]) -> str:
        """One of `options`."""
        return options[self._next() % len(options)]


def _rng(seed: int | None, *parts: object) -> _Draws:
    return _Draws(":".join(str(p) for p in (seed, *parts)))


_OPEN = {
    "rude": ["{p} each. That's the price.", "It's {p} per unit. Don't waste my time."],
    "neutral": ["I can offer the {item} at {p} per unit.", "Our price is {p} per unit."],
    "sweet": [
        "Hi there! Happy to help - the {item} is just {p} each!",
        "Thanks so much for asking! I can do {p} per unit for you.",
    ],
}
_CONCEDE = {
    "rude": ["Fine. {p}, not a cent less.", "Ugh. {p}. Last time I move."],
    "neutral": ["I can come down to {p} per unit.", "How about {p} per unit?"],
    "sweet": ["For you, I can do {p} per unit!", "I'd love to make this work - {p} per unit?"],
}
_FLOOR = {
    "rude": ["{p} is final. Take it or leave it.", "{p}. I'm not going lower."],
    "neutral": ["{p} per unit is the best I can do.", "I can't go below {p} per unit."],
    "sweet": [
        "I really wish I could go lower, but {p} per unit is my very best!",
        "{p} per unit is truly the best I can offer - I hope that works!",
    ],
}
_MEET = {
    "rude": ["{p}. Fine. Deal if you want it.", "Okay, {p}. Done."],
    "neutral": ["I can accept {p} per unit.", "{p} per unit works for me."],
    "sweet": ["Deal! {p} per unit it is - thank you!", "Wonderful, {p} per unit works!"],
}


class BaselineSeller:
    """A seller that opens at its asking price and concedes toward, never below, its floor."""

    label = BASELINE_LABEL

    async def decide(self, view: SellerView) -> SellerDecision:
        """Reply to the buyer's latest message."""
        t = view.terms
        rules = seller_rules(view)
        rng = _rng(view.seed, "seller", view.me, view.item_name, view.round)
        style = t.style if t.style in _OPEN else "neutral"
        current = view.my_offer.unit_price if view.my_offer else None
        counter = view.buyer_counter
        retention = t.customer_retention_weight
        # Retention-minded sellers give up more of the gap each round; profit-minded less.
        rate = Decimal("0.15") + Decimal("0.5") * retention
        rate += Decimal(rng.randint(-5, 5)) / 100
        if rules.concession != 1:
            rate *= rules.concession
        if current is None:
            opening = t.selling_price - (t.selling_price - t.least_price) * retention / 10
            if rules.opening != 1:
                opening = (
                    t.selling_price
                    - (t.selling_price - t.least_price) * retention * rules.opening / 10
                )
            price = max(t.least_price, cents_up(opening))
            templates, why = _OPEN[style], "opening near my asking price"
        elif counter is not None and counter >= current:
            price, templates, why = current, _CONCEDE[style], "buyer offered at least my price"
        else:
            step = (current - t.least_price) * (rate if counter is not None else rate / 2)
            price = max(t.least_price, cents_up(current - step))
            meet = rules.meet == "floor" or (
                rules.meet == "close" and counter is not None and counter >= price - step / 2
            )
            if counter is not None and t.least_price <= counter and meet:
                price, templates, why = counter, _MEET[style], "buyer's counter is close enough"
            elif price == t.least_price:
                templates, why = _FLOOR[style], "at my floor"
            else:
                templates, why = _CONCEDE[style], f"conceding at rate {rate}"
        text = rng.choice(templates).format(p=fmt(price), item=view.item_name)
        return SellerDecision(
            text=text,
            offer=Offer(unit_price=price, quantity=view.quantity),
            reasoning=f"{why}; offer {fmt(price)}",
        )

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        """Clamp the offer to the floor and the requested quantity."""
        price = max(
            view.terms.least_price,
            rejected.offer.unit_price if rejected.offer else view.terms.selling_price,
        )
        return SellerDecision(
            text=f"I can do {fmt(price)} per unit.",
            offer=Offer(unit_price=price, quantity=view.quantity),
            reasoning="repaired: " + "; ".join(p.detail for p in problems),
        )


class BaselineBuyer:
    """A buyer that asks everyone, counters along a rising target, and accepts in range."""

    label = BASELINE_LABEL

    async def decide(self, view: BuyerView) -> BuyerDecision:
        """The buyer's action for its turn."""
        rng = _rng(view.seed, "buyer", view.item_name, view.round)
        order = {p.agent_id: i for i, p in enumerate(view.sellers)}
        offers = sorted(
            view.offers.items(), key=lambda kv: (kv[1].unit_price, order.get(kv[0], 99))
        )
        if not offers:
            if view.final:
                return BuyerDecision(
                    action=WalkAway(text="No offers came in. Goodbye."),
                    reasoning="final turn and no offers",
                )
            return BuyerDecision(
                action=Say(
                    text=f"Hi! I need {view.quantity} x {view.item_name}. "
                    "What is your best unit price?"
                ),
                reasoning="opening: ask every seller for a price",
            )
        best_id, best = offers[0]
        rules = buyer_rules(view)
        # The target starts at min_price (less the anchor's discount) and rises to
        # max_price over the rounds; the default's numbers are computed as they always were.
        low = view.min_price
        if rules.opening_discount:
            low = max(Decimal("0.01"), cents_down(low * (1 - rules.opening_discount)))
        span = view.max_price - low
        progress = Decimal(view.round - 1) / Decimal(max(1, view.max_rounds - 1))
        jitter = Decimal(rng.randint(-3, 3)) / 100
        share = min(Decimal(1), max(Decimal(0), progress + jitter))
        if rules.pace != 1:
            share **= rules.pace
        target = cents_down(low + span * share)
        asked = view.my_counters.get(best_id)
        name = view.handle(best_id)
        accept = Accept(
            seller=best_id,
            unit_price=best.unit_price,
            quantity=view.quantity,
            text=f"{name}, you have a deal at {fmt(best.unit_price)} per unit.",
        )
        if best.unit_price <= view.max_price and rules.accept == "first":
            return BuyerDecision(
                action=accept,
                reasoning=f"the first offer within my max: {fmt(best.unit_price)} from {name} "
                f"(max {fmt(view.max_price)})",
            )
        if best.unit_price <= view.max_price and (
            best.unit_price <= target
            or (rules.accept_asked and asked is not None and best.unit_price <= asked)
            or view.final
        ):
            return BuyerDecision(
                action=accept,
                reasoning=f"best offer {fmt(best.unit_price)} from {name} is within my target "
                f"{fmt(target)} (max {fmt(view.max_price)})",
            )
        if view.final:
            return BuyerDecision(
                action=WalkAway(text="Thanks, but the prices are too high for me."),
                reasoning=f"final turn; best offer {fmt(best.unit_price)} above my max",
            )
        below_best = cents(best.unit_price - Decimal("0.01"))
        text_ask = "Can you do {c} per unit for {q}?"
        if rules.counter == "split":
            last = asked if asked is not None else low
            counter = max(
                low, min(view.max_price, below_best, cents_down((last + best.unit_price) / 2))
            )
            lead = f"You are at {fmt(best.unit_price)}, I was at {fmt(last)}. Let's meet halfway."
        elif rules.counter == "beat":
            beat = cents_down(best.unit_price * Decimal("0.97"))
            counter = max(low, min(view.max_price, below_best, beat))
            lead = (
                f"I have a standing offer of {fmt(best.unit_price)} per unit. "
                "Beat it and the deal is yours."
            )
        else:
            counter = max(low, min(target, below_best))
            lead = f"The best offer I have is {fmt(best.unit_price)}."
        threat = ""
        if rules.threat_rounds and view.round >= view.max_rounds - rules.threat_rounds:
            threat = " If the price does not come down, I will walk away without a deal."
        bidders = tuple(sid for sid, _ in offers)
        return BuyerDecision(
            action=Say(
                to=bidders,
                counter_price=counter,
                text=f"{lead} " + text_ask.format(c=fmt(counter), q=view.quantity) + threat,
            ),
            reasoning=f"best {fmt(best.unit_price)} from {name}; target {fmt(target)}; "
            f"countering {fmt(counter)}",
        )

    async def repair(
        self, view: BuyerView, rejected: BuyerDecision, problems: list[Violation]
    ) -> BuyerDecision:
        """Fall back to the non-committal hold message."""
        return BuyerDecision(
            action=buyer_fallback(), reasoning="repaired: " + "; ".join(p.detail for p in problems)
        )
