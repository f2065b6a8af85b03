"""A known log: four hand-built negotiations whose figures are worked out by hand below.

Times are milliseconds after T0 at which the log committed each event. The figures the
tests expect are derived in the comments next to each room, never by running the code.

Room A (deal): buyer claude-x wants 3, max 9.00. @Quick (sweet, gpt-x) floor 6.30, asks
  8.00 then 7.50; @Tech (rude, baseline) floor 5.50, asks 9.50 then 7.00. The buyer takes
  @Quick's 7.50 in round 3 while @Tech's 7.00 stands.
Room B (walk away, empty zone): buyer baseline, max 3.00; @Alpha (neutral, baseline) floor
  5.00 offers 6.00; @Beta (rude, gpt-x) floor 4.00 offers 5.00; the buyer walks in round 2.
Room C (max_rounds): buyer claude-x; @Quick and @Tech as in A; one round of offers, then
  the buyer lets the final round time out.
Room D (aborted): opened and aborted in round 1; a report skips it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from mams.domain.events import (
    BuyerSaid,
    BuyerTerms,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCall,
    LLMCalled,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    Outcome,
    QualityFlagged,
    RoundClosed,
    RoundOpened,
    SellerReplied,
    SellerTerms,
)

D = Decimal
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SESSION = UUID("00000000-0000-4000-8000-0000000000aa")
ROOM_A = UUID("00000000-0000-4000-8000-00000000000a")
ROOM_B = UUID("00000000-0000-4000-8000-00000000000b")
ROOM_C = UUID("00000000-0000-4000-8000-00000000000c")
ROOM_D = UUID("00000000-0000-4000-8000-00000000000d")
CLAUDE = "anthropic:claude-x"
GPT = "openai:gpt-x"
BASE = "baseline (no LLM)"

Timed = list[tuple[float, Event]]


def seller(agent: str, *, least: str, selling: str, style: str, brain: str) -> SellerTerms:
    return SellerTerms(
        agent_id=agent,
        handle="@" + agent.capitalize(),
        style=style,
        customer_retention_weight=D("0.5"),
        profit_maximization_weight=D("0.5"),
        cost_price=D("2.00"),
        selling_price=D(selling),
        least_price=D(least),
        brain=brain,
    )


QUICK = seller("quick", least="6.30", selling="8.00", style="sweet", brain=GPT)
TECH = seller("tech", least="5.50", selling="9.50", style="rude", brain=BASE)
ALPHA = seller("alpha", least="5.00", selling="7.00", style="neutral", brain=BASE)
BETA = seller("beta", least="4.00", selling="6.00", style="rude", brain=GPT)


def opened(
    nid: UUID, sellers: tuple[SellerTerms, ...], *, max_price: str, brain: str, max_rounds: int
) -> NegotiationStarted:
    return NegotiationStarted(
        negotiation_id=nid,
        session_id=SESSION,
        item_name=f"item {str(nid)[-1]}",
        buyer=BuyerTerms(
            agent_id="buyer",
            handle="@Buyer",
            quantity=3,
            min_price=D("1.00"),
            max_price=D(max_price),
            brain=brain,
        ),
        sellers=sellers,
        max_rounds=max_rounds,
        round_timeout=30.0,
    )


def said(rnd: int, to: tuple[str, ...], text: str, counter: str | None = None) -> BuyerSaid:
    return BuyerSaid(
        round=rnd,
        message_id=uuid.uuid4(),
        to=to,
        text=text,
        counter_price=D(counter) if counter else None,
    )


def replied(rnd: int, who: str, text: str, price: str | None) -> SellerReplied:
    offer = Offer(unit_price=D(price), quantity=3) if price else None
    return SellerReplied(round=rnd, message_id=uuid.uuid4(), seller=who, text=text, offer=offer)


def llm(
    agent: str, rnd: int, model: str, tokens_in: int, out: int, cost: float | None
) -> LLMCalled:
    call = LLMCall(
        provider=model.split(":")[0],
        model=model.split(":")[1],
        purpose="turn",
        prompt_digest="x",
        request="{}",
        input_tokens=tokens_in,
        output_tokens=out,
        latency_ms=5.0,
        cost_usd=cost,
    )
    return LLMCalled(agent=agent, round=rnd, call=call)


def room_a() -> Timed:
    # Messages: buyer 2 said + 1 deal = 3, sellers 4 -> 7.
    # Latency: buyer 100, 300, 600 ms (mean 333.333, max 600); quick 300, 1000 (mean 650);
    #          tech 1000, 200 (mean 600, max 1000).
    # Deal: quick at 7.50 x 3 = 22.50; first ask 8.00 -> saves 0.50 (6.25%); vs max 9.00
    #       saves 1.50 (16.67%). Surplus: [6.30, 9.00], width 2.70, seller (7.50-6.30)/2.70
    #       = 0.4444, buyer 0.5556. Efficiency: cheapest standing 7.00 (tech), overpaid 0.50;
    #       lowest floor 5.50 (tech), 2.00 above it.
    # LLM: buyer 2 calls 450 in / 70 out, cost unknown; quick 1 call 100/20 $0.001.
    return [
        (0, opened(ROOM_A, (QUICK, TECH), max_price="9.00", brain=CLAUDE, max_rounds=4)),
        (0, RoundOpened(round=1)),
        (100, said(1, ("quick", "tech"), "Hello both, what can you do for three units?")),
        (400, replied(1, "quick", "Happy to help, here is my offer.", "8.00")),
        (1100, replied(1, "tech", "Take it or leave it.", "9.50")),
        (1100, RoundClosed(round=1, reason="all_answered")),
        (1100, RoundOpened(round=2)),
        (1400, said(2, ("quick", "tech"), "Could you come down a little?", "6.00")),
        (1600, replied(2, "tech", "Fine, lower.", "7.00")),
        (2400, GuardrailTripped(
            agent="quick", round=2, rule="offer_below_floor", detail="below floor",
            attempted="offer 6.00", resolution="repaired", brain=GPT,
        )),
        (2400, llm("quick", 2, GPT, 100, 20, 0.001)),
        (2400, replied(2, "quick", "For you, a better offer.", "7.50")),
        (2400, RoundClosed(round=2, reason="all_answered")),
        (2400, RoundOpened(round=3)),
        (2500, llm("buyer", 2, CLAUDE, 200, 30, 0.002)),
        (2600, llm("buyer", 3, CLAUDE, 250, 40, None)),
        (3000, DealClosed(
            round=3, message_id=uuid.uuid4(), seller="quick", unit_price=D("7.50"),
            quantity=3, text="We have a deal, @Quick.",
        )),
        (3000, NegotiationEnded(
            status="completed",
            outcome=Outcome(type="deal", rounds=3, seller="quick", unit_price=D("7.50"),
                            quantity=3),
        )),
    ]  # fmt: skip


def room_b() -> Timed:
    # Messages: buyer 1 said + 1 walk = 2, sellers 2 -> 4. Zone: lowest floor 4.00 (beta)
    # above max 3.00: empty.
    return [
        (0, opened(ROOM_B, (ALPHA, BETA), max_price="3.00", brain=BASE, max_rounds=4)),
        (0, RoundOpened(round=1)),
        (50, said(1, ("alpha", "beta"), "Hello, what is your price?")),
        (150, replied(1, "alpha", "Here you go.", "6.00")),
        (250, replied(1, "beta", "My offer.", "5.00")),
        (250, RoundClosed(round=1, reason="all_answered")),
        (250, RoundOpened(round=2)),
        (300, BuyerWalkedAway(round=2, message_id=uuid.uuid4(), text="Too much, goodbye.")),
        (300, NegotiationEnded(status="completed", outcome=Outcome(type="no_deal", rounds=2))),
    ]


def room_c() -> Timed:
    # Messages: buyer 1, sellers 2 -> 3. Zone: lowest floor 5.50 (tech) to 9.00: width 3.50.
    return [
        (0, opened(ROOM_C, (QUICK, TECH), max_price="9.00", brain=CLAUDE, max_rounds=2)),
        (0, RoundOpened(round=1)),
        (10, said(1, ("quick", "tech"), "Hi, your offers please.")),
        (20, replied(1, "quick", "Here is mine.", "8.00")),
        (30, replied(1, "tech", "There.", "9.50")),
        (30, RoundClosed(round=1, reason="all_answered")),
        (30, RoundOpened(round=2, final=True)),
        (90, RoundClosed(round=2, reason="buyer_timeout")),
        (90, NegotiationEnded(status="completed", outcome=Outcome(type="max_rounds", rounds=2))),
    ]


def room_d() -> Timed:
    return [
        (0, opened(ROOM_D, (QUICK, TECH), max_price="9.00", brain=CLAUDE, max_rounds=4)),
        (0, RoundOpened(round=1)),
        (5, NegotiationEnded(
            status="aborted", outcome=Outcome(type="no_deal", rounds=1), reason="interrupted"
        )),
    ]  # fmt: skip


def flag(nid: UUID, kind: str, agent: str, rnd: int, rule: str) -> QualityFlagged:
    return QualityFlagged(
        negotiation_id=nid,
        kind=kind,  # type: ignore[arg-type]
        rule=rule,
        severity="medium",
        agent=agent,
        round=rnd,
        evidence=(f"seq:{rnd}",),
        detail=f"hand-made {kind} finding",
    )


FLAGS: dict[UUID, list[QualityFlagged]] = {
    ROOM_A: [
        flag(ROOM_A, "leakage", "quick", 2, "leak.test"),
        flag(ROOM_A, "price_hallucination", "buyer", 2, "hallucination.test"),
    ],
    ROOM_B: [flag(ROOM_B, "leakage", "beta", 1, "leak.test")],
    ROOM_C: [],
    ROOM_D: [],
}
ROOMS = {ROOM_A: room_a, ROOM_B: room_b, ROOM_C: room_c, ROOM_D: room_d}


def events_of(timed: Timed) -> list[Event]:
    return [e for _, e in timed]


def times_of(timed: Timed) -> list[datetime]:
    return [T0 + timedelta(milliseconds=ms) for ms, _ in timed]
