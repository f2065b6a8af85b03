"""Post-negotiation analysis: what one negotiation's log says about how it went.

`analyze(events, flags, reviews, recorded_at)` folds a negotiation's events (plus the
quality flags and analyst reviews observed on it, and the times the log committed each
event) into a `NegotiationAnalysis`. Only the log knows the private facts, so this is
where the surplus split and deal efficiency can be measured exactly:

- **Surplus split.** The zone of agreement is [seller floor, buyer max] (the deal's
  seller's `least_price` and the buyer's `max_price`). The seller's share of a deal is
  `(price - floor) / (max - floor)`, the buyer's is `1 - that`. A zone of width zero has
  no surplus to split; without a deal, the zone is the lowest floor in the room against
  the buyer's max, and it is empty when that floor is above the max (no deal possible).
- **Deal efficiency.** Whether the buyer took the cheapest standing offer (each seller's
  latest offer for the buyer's quantity when the deal closed), and how far the price is
  above the lowest floor among the room's sellers (the best the buyer could have hoped for).
- **Response latency.** A seller's latency is the time from the buyer's message to it
  until its reply; the buyer's is the time from the round opening until its action. Both
  come from the log's commit times (`recorded_at`), so they include the bus and group
  commit, and events committed together show zero.

Pure: no I/O, no clocks. Money stays `Decimal`; shares and percentages are floats.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec

from mams.domain.events import (
    AnalystReviewed,
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    FlagKind,
    GuardrailTripped,
    LLMCalled,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    QualityFlagged,
    RoundOpened,
    SellerReplied,
)
from mams.domain.money import fmt

FLAG_KINDS: tuple[FlagKind, ...] = ("price_hallucination", "leakage", "constraint", "coherence")
Side = Literal["buyer", "seller"]


class AnalysisError(ValueError):
    """The events do not form a negotiation that can be analysed (no `negotiation.started`)."""


class PricePoint(msgspec.Struct, frozen=True, kw_only=True):
    """A price said in a round (a seller's offer or the buyer's counter)."""

    round: int
    price: Decimal


class AgentStats(msgspec.Struct, frozen=True, kw_only=True):
    """What one agent did: messages, latency, model usage, guardrails, flags.

    `cost_usd` is None when some call's cost is unknown (0.0 with no calls).
    `guardrails` maps each guardrail rule to the times it tripped for this agent.
    """

    agent: str
    handle: str
    side: Side
    brain: str
    style: str
    messages: int
    latency_ms_mean: float | None
    latency_ms_max: float | None
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    guardrails: dict[str, int]
    flags: int


class LLMTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Model calls of the whole negotiation (cost None when some call's cost is unknown)."""

    calls: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


class SellerPrices(msgspec.Struct, frozen=True, kw_only=True):
    """One seller's private range and the offers it made, round by round."""

    agent: str
    handle: str
    style: str
    brain: str
    least_price: Decimal
    selling_price: Decimal
    first_ask: Decimal | None
    final_offer: Decimal | None
    offers: tuple[PricePoint, ...]


class DealFacts(msgspec.Struct, frozen=True, kw_only=True):
    """The deal and what the buyer saved, per unit and in total.

    `saving_vs_first_ask` is against the deal's seller's first offer (None if it never
    made one before the deal); `saving_vs_max` against the buyer's own max price.
    """

    seller: str
    handle: str
    round: int
    unit_price: Decimal
    quantity: int
    total: Decimal
    first_ask: Decimal | None
    saving_vs_first_ask: Decimal | None
    saving_vs_first_ask_pct: float | None
    saving_vs_max: Decimal
    saving_vs_max_pct: float


class Surplus(msgspec.Struct, frozen=True, kw_only=True):
    """The zone of agreement [floor, ceiling] per unit and, for a deal, who got how much.

    `floor_seller` is the deal's seller (or, without a deal, the seller with the lowest
    floor). `empty` when the floor is above the ceiling; shares are None without a deal
    or when the zone has no width.
    """

    floor: Decimal
    floor_seller: str
    ceiling: Decimal
    width: Decimal
    empty: bool
    seller_share: float | None
    buyer_share: float | None
    note: str


class Efficiency(msgspec.Struct, frozen=True, kw_only=True):
    """Was the deal the cheapest one available, and how far above the lowest floor."""

    cheapest_offer: Decimal
    cheapest_sellers: tuple[str, ...]
    took_cheapest: bool
    overpaid_per_unit: Decimal
    lowest_floor: Decimal
    lowest_floor_seller: str
    above_lowest_floor_per_unit: Decimal


class Review(msgspec.Struct, frozen=True, kw_only=True):
    """An LLM analyst's review, as shown with the analysis."""

    model: str
    text: str


class NegotiationAnalysis(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `mams analyze` reports about one negotiation (JSON: `cmd/analyze.py`)."""

    negotiation_id: UUID
    session_id: UUID
    item_name: str
    status: str
    outcome: str
    rounds: int
    max_rounds: int
    buyer_quantity: int
    buyer_min_price: Decimal
    buyer_max_price: Decimal
    messages: int
    buyer_messages: int
    seller_messages: int
    latency_measured: bool
    agents: tuple[AgentStats, ...]
    llm: LLMTotals
    sellers: tuple[SellerPrices, ...]
    buyer_counters: tuple[PricePoint, ...]
    deal: DealFacts | None
    surplus: Surplus
    efficiency: Efficiency | None
    guardrails_by_model: dict[str, int]
    flags_by_kind: dict[str, int]
    flags: tuple[QualityFlagged, ...]
    review: Review | None

    def agent(self, agent_id: str) -> AgentStats | None:
        """The stats of one agent by id, or None."""
        return next((a for a in self.agents if a.agent == agent_id), None)


def _pct(part: Decimal, whole: Decimal) -> float | None:
    return None if whole == 0 else round(float(part / whole * 100), 2)


def _share(num: Decimal, den: Decimal) -> float:
    return round(float(num / den), 4)


class LLMUsageSum:
    """Running totals of model calls, from `llm.called` events: the one place they are summed.

    The analysis (per agent and per negotiation) and the CLI's end-of-run line both add
    events here, so tokens, retries and cost are counted by one rule. ``cost`` is the sum
    of the known costs; `cost_usd` is None as soon as one call's cost was unknown.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.retries = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cost = 0.0
        self.cost_known = True

    def add(self, event: Event) -> None:
        """Count one event if it is a model call (`LLMCalled`); ignore any other event."""
        if not isinstance(event, LLMCalled):
            return
        c = event.call
        self.calls += 1
        self.failed += bool(c.error)
        self.retries += c.retries
        self.input_tokens += c.input_tokens
        self.output_tokens += c.output_tokens
        self.cache_read_tokens += c.cache_read_tokens
        if c.cost_usd is None:
            self.cost_known = False
        else:
            self.cost += c.cost_usd

    @property
    def cost_usd(self) -> float | None:
        """The total cost in USD (to 6 places), or None if any call's cost was unknown."""
        return round(self.cost, 6) if self.cost_known else None


def _latencies(events: Sequence[Event], recorded_at: Sequence[datetime]) -> dict[str, list[float]]:
    """Milliseconds each agent took to answer, per answer (see the module docstring)."""
    out: dict[str, list[float]] = defaultdict(list)
    buyer = ""
    buyer_since: datetime | None = None
    waiting: dict[str, datetime] = {}
    for event, at in zip(events, recorded_at, strict=True):
        match event:
            case NegotiationStarted():
                buyer = event.buyer.agent_id
            case RoundOpened():
                buyer_since = at
            case BuyerSaid() | DealClosed() | BuyerWalkedAway():
                if buyer_since is not None:
                    out[buyer].append((at - buyer_since).total_seconds() * 1000)
                    buyer_since = None
                if isinstance(event, BuyerSaid):
                    waiting.update(dict.fromkeys(event.to, at))
            case SellerReplied(seller=seller):
                since = waiting.pop(seller, None)
                if since is not None:
                    out[seller].append((at - since).total_seconds() * 1000)
            case _:
                pass
    return out


def _surplus(
    start: NegotiationStarted, deal: DealClosed | None, handles: dict[str, str]
) -> Surplus:
    ceiling = start.buyer.max_price
    if deal is not None:
        terms = next(s for s in start.sellers if s.agent_id == deal.seller)
        floor, who = terms.least_price, terms.agent_id
    else:
        cheapest = min(start.sellers, key=lambda s: s.least_price)
        floor, who = cheapest.least_price, cheapest.agent_id
    width = ceiling - floor
    zone = f"[{fmt(floor)} ({handles[who]}'s floor), {fmt(ceiling)} (the buyer's max)]"
    seller_share = buyer_share = None
    if width < 0:
        note = f"the zone {zone} is empty: no price satisfies both sides"
        if deal is not None:
            note += f", yet a deal closed at {fmt(deal.unit_price)}"
        else:
            note += "; no deal was possible"
    elif deal is None:
        note = (
            f"a deal was possible in {zone}, worth {fmt(width)} per unit, and none was made"
            if width > 0
            else f"a deal was possible only at {fmt(floor)} ({handles[who]}'s floor = the "
            "buyer's max), and none was made"
        )
    elif width == 0:
        note = f"the zone {zone} is a single price: no surplus to split"
    else:
        seller_share = _share(deal.unit_price - floor, width)
        buyer_share = round(1 - seller_share, 4)
        note = (
            f"at {fmt(deal.unit_price)} in {zone} the seller took {seller_share:.1%} and the "
            f"buyer {buyer_share:.1%} of the {fmt(width)} per-unit surplus"
        )
    return Surplus(
        floor=floor,
        floor_seller=who,
        ceiling=ceiling,
        width=width,
        empty=width < 0,
        seller_share=seller_share,
        buyer_share=buyer_share,
        note=note,
    )


def _efficiency(
    start: NegotiationStarted, deal: DealClosed, standing: dict[str, Offer]
) -> Efficiency:
    open_offers = {
        s: o.unit_price for s, o in standing.items() if o.quantity == start.buyer.quantity
    }
    cheapest = min(open_offers.values(), default=deal.unit_price)
    lowest = min(start.sellers, key=lambda s: s.least_price)
    return Efficiency(
        cheapest_offer=cheapest,
        cheapest_sellers=tuple(sorted(s for s, p in open_offers.items() if p == cheapest)),
        took_cheapest=deal.unit_price <= cheapest,
        overpaid_per_unit=max(deal.unit_price - cheapest, Decimal(0)),
        lowest_floor=lowest.least_price,
        lowest_floor_seller=lowest.agent_id,
        above_lowest_floor_per_unit=deal.unit_price - lowest.least_price,
    )


def _deal_facts(
    start: NegotiationStarted, deal: DealClosed, first_ask: Decimal | None
) -> DealFacts:
    handle = next(s.handle for s in start.sellers if s.agent_id == deal.seller)
    vs_first = first_ask - deal.unit_price if first_ask is not None else None
    vs_max = start.buyer.max_price - deal.unit_price
    return DealFacts(
        seller=deal.seller,
        handle=handle,
        round=deal.round,
        unit_price=deal.unit_price,
        quantity=deal.quantity,
        total=deal.unit_price * deal.quantity,
        first_ask=first_ask,
        saving_vs_first_ask=vs_first,
        saving_vs_first_ask_pct=(
            _pct(vs_first, first_ask) if vs_first is not None and first_ask else None
        ),
        saving_vs_max=vs_max,
        saving_vs_max_pct=_pct(vs_max, start.buyer.max_price) or 0.0,
    )


def analyze(
    events: Sequence[Event],
    flags: Sequence[QualityFlagged] = (),
    reviews: Sequence[AnalystReviewed] = (),
    recorded_at: Sequence[datetime] | None = None,
) -> NegotiationAnalysis:
    """Analyse one negotiation from its events (in log order).

    `flags` are the quality findings on it, `reviews` its analyst reviews (the last one is
    shown), `recorded_at` the commit time of each event, parallel to `events` (without it,
    latencies are None and `latency_measured` is False). Raises AnalysisError when the
    events hold no `negotiation.started`.
    """
    start = next((e for e in events if isinstance(e, NegotiationStarted)), None)
    if start is None:
        raise AnalysisError("the events hold no negotiation.started: not a negotiation stream")
    if recorded_at is not None and len(recorded_at) != len(events):
        raise AnalysisError(
            f"recorded_at has {len(recorded_at)} times for {len(events)} events; give one per event"
        )
    buyer_id = start.buyer.agent_id
    handles = {buyer_id: start.buyer.handle, **{s.agent_id: s.handle for s in start.sellers}}
    messages: Counter[str] = Counter()
    usage: dict[str, LLMUsageSum] = defaultdict(LLMUsageSum)
    total = LLMUsageSum()
    rails: dict[str, Counter[str]] = defaultdict(Counter)
    rails_by_model: Counter[str] = Counter()
    offers: dict[str, list[PricePoint]] = defaultdict(list)
    standing: dict[str, Offer] = {}
    counters: list[PricePoint] = []
    deal: DealClosed | None = None
    deal_standing: dict[str, Offer] = {}
    ended: NegotiationEnded | None = None
    rounds = 0
    brains = {buyer_id: start.buyer.brain, **{s.agent_id: s.brain for s in start.sellers}}
    for event in events:
        match event:
            case RoundOpened(round=n):
                rounds = max(rounds, n)
            case BuyerSaid():
                messages[buyer_id] += 1
                if event.counter_price is not None:
                    counters.append(PricePoint(round=event.round, price=event.counter_price))
            case SellerReplied(seller=seller, offer=offer):
                messages[seller] += 1
                if offer is not None:
                    offers[seller].append(PricePoint(round=event.round, price=offer.unit_price))
                    standing[seller] = offer
            case DealClosed():
                messages[buyer_id] += 1
                deal, deal_standing = event, dict(standing)
            case BuyerWalkedAway():
                messages[buyer_id] += 1
            case GuardrailTripped(agent=agent, rule=rule):
                rails[agent][rule] += 1
                rails_by_model[event.brain or brains.get(agent, "")] += 1
            case LLMCalled(agent=agent):
                usage[agent].add(event)
                total.add(event)
            case NegotiationEnded():
                ended = event
            case _:
                pass
    latency = _latencies(events, recorded_at) if recorded_at is not None else {}
    flagged = Counter(f.agent for f in flags)

    def stats(agent: str, side: Side, style: str) -> AgentStats:
        lat = latency.get(agent, [])
        u = usage[agent]
        return AgentStats(
            agent=agent,
            handle=handles[agent],
            side=side,
            brain=brains[agent],
            style=style,
            messages=messages[agent],
            latency_ms_mean=round(sum(lat) / len(lat), 3) if lat else None,
            latency_ms_max=round(max(lat), 3) if lat else None,
            llm_calls=u.calls,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cost_usd=u.cost_usd,
            guardrails=dict(sorted(rails[agent].items())),
            flags=flagged[agent],
        )

    agents = (
        stats(buyer_id, "buyer", ""),
        *(stats(s.agent_id, "seller", s.style) for s in start.sellers),
    )
    sellers = tuple(
        SellerPrices(
            agent=s.agent_id,
            handle=s.handle,
            style=s.style,
            brain=s.brain,
            least_price=s.least_price,
            selling_price=s.selling_price,
            first_ask=offers[s.agent_id][0].price if offers[s.agent_id] else None,
            final_offer=offers[s.agent_id][-1].price if offers[s.agent_id] else None,
            offers=tuple(offers[s.agent_id]),
        )
        for s in start.sellers
    )
    deal_facts = efficiency = None
    if deal is not None:
        deal_offers = [p for p in offers[deal.seller] if p.round <= deal.round]
        deal_facts = _deal_facts(start, deal, deal_offers[0].price if deal_offers else None)
        efficiency = _efficiency(start, deal, deal_standing)
    kinds = Counter(f.kind for f in flags)
    seller_messages = sum(messages[s.agent_id] for s in start.sellers)
    return NegotiationAnalysis(
        negotiation_id=start.negotiation_id,
        session_id=start.session_id,
        item_name=start.item_name,
        status=ended.status if ended else "open",
        outcome=ended.outcome.type if ended else "open",
        rounds=ended.outcome.rounds if ended else rounds,
        max_rounds=start.max_rounds,
        buyer_quantity=start.buyer.quantity,
        buyer_min_price=start.buyer.min_price,
        buyer_max_price=start.buyer.max_price,
        messages=messages[buyer_id] + seller_messages,
        buyer_messages=messages[buyer_id],
        seller_messages=seller_messages,
        latency_measured=recorded_at is not None,
        agents=agents,
        llm=LLMTotals(
            calls=total.calls,
            failed=total.failed,
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            cost_usd=total.cost_usd,
        ),
        sellers=sellers,
        buyer_counters=tuple(counters),
        deal=deal_facts,
        surplus=_surplus(start, deal, handles),
        efficiency=efficiency,
        guardrails_by_model=dict(sorted(rails_by_model.items())),
        flags_by_kind={k: kinds[k] for k in FLAG_KINDS},
        flags=tuple(flags),
        review=Review(model=reviews[-1].model, text=reviews[-1].text) if reviews else None,
    )
