"""`analyze` and `build_report` against the hand-built log of tests/analysis/logs.py.

Every expected figure is worked out by hand in logs.py's comments.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import pytest

from mams.domain.analysis import AnalysisError, NegotiationAnalysis, PricePoint, analyze
from mams.domain.events import AnalystReviewed, RoundOpened
from mams.domain.report import GroupRow, build_report
from tests.analysis import logs
from tests.analysis.logs import BASE, CLAUDE, GPT, ROOM_A, ROOM_B, ROOM_C, ROOM_D, ROOMS

D = Decimal


def full(nid: UUID, **kw: object) -> NegotiationAnalysis:
    room = ROOMS[nid]()
    return analyze(
        logs.events_of(room),
        logs.FLAGS[nid],
        recorded_at=logs.times_of(room),
        **kw,  # type: ignore[arg-type]
    )


def test_messages_rounds_and_latency_per_agent() -> None:
    a = full(ROOM_A)
    assert (a.outcome, a.status, a.rounds, a.max_rounds) == ("deal", "completed", 3, 4)
    assert (a.messages, a.buyer_messages, a.seller_messages) == (7, 3, 4)
    assert a.latency_measured
    buyer, quick, tech = a.agent("buyer"), a.agent("quick"), a.agent("tech")
    assert buyer is not None
    assert quick is not None
    assert tech is not None
    assert (buyer.messages, quick.messages, tech.messages) == (3, 2, 2)
    assert (buyer.latency_ms_mean, buyer.latency_ms_max) == (333.333, 600.0)
    assert (quick.latency_ms_mean, quick.latency_ms_max) == (650.0, 1000.0)
    assert (tech.latency_ms_mean, tech.latency_ms_max) == (600.0, 1000.0)
    assert [x.side for x in a.agents] == ["buyer", "seller", "seller"]
    assert (quick.style, quick.brain, buyer.brain) == ("sweet", GPT, CLAUDE)


def test_without_commit_times_latency_is_not_invented() -> None:
    a = analyze(logs.events_of(logs.room_a()))
    assert not a.latency_measured
    assert all(x.latency_ms_mean is None and x.latency_ms_max is None for x in a.agents)


def test_llm_usage_per_agent_and_total() -> None:
    a = full(ROOM_A)
    buyer, quick, tech = a.agent("buyer"), a.agent("quick"), a.agent("tech")
    assert buyer is not None
    assert quick is not None
    assert tech is not None
    assert (buyer.llm_calls, buyer.input_tokens, buyer.output_tokens) == (2, 450, 70)
    assert buyer.cost_usd is None  # one of its calls has no known cost
    assert (quick.llm_calls, quick.input_tokens, quick.output_tokens) == (1, 100, 20)
    assert quick.cost_usd == 0.001
    assert (tech.llm_calls, tech.cost_usd) == (0, 0.0)
    assert (a.llm.calls, a.llm.input_tokens, a.llm.output_tokens) == (3, 550, 90)
    assert a.llm.cost_usd is None


def test_first_asks_savings_surplus_and_efficiency_of_a_deal() -> None:
    a = full(ROOM_A)
    quick, tech = a.sellers
    assert (quick.first_ask, quick.final_offer) == (D("8.00"), D("7.50"))
    assert tech.offers == (
        PricePoint(round=1, price=D("9.50")),
        PricePoint(round=2, price=D("7.00")),
    )
    assert a.buyer_counters == (PricePoint(round=2, price=D("6.00")),)
    deal = a.deal
    assert deal is not None
    assert (deal.seller, deal.handle, deal.unit_price, deal.total) == (
        "quick",
        "@Quick",
        D("7.50"),
        D("22.50"),
    )
    assert (deal.first_ask, deal.saving_vs_first_ask, deal.saving_vs_first_ask_pct) == (
        D("8.00"),
        D("0.50"),
        6.25,
    )
    assert (deal.saving_vs_max, deal.saving_vs_max_pct) == (D("1.50"), 16.67)
    s = a.surplus
    assert (s.floor, s.floor_seller, s.ceiling, s.width, s.empty) == (
        D("6.30"),
        "quick",
        D("9.00"),
        D("2.70"),
        False,
    )
    assert (s.seller_share, s.buyer_share) == (0.4444, 0.5556)
    e = a.efficiency
    assert e is not None
    assert (e.cheapest_offer, e.cheapest_sellers, e.took_cheapest) == (D("7.00"), ("tech",), False)
    assert e.overpaid_per_unit == D("0.50")
    assert (e.lowest_floor, e.lowest_floor_seller, e.above_lowest_floor_per_unit) == (
        D("5.50"), "tech", D("2.00")
    )  # fmt: skip


def test_guardrails_flags_and_review() -> None:
    review = AnalystReviewed(negotiation_id=ROOM_A, model="m:x", text="Fine work.")
    a = full(ROOM_A, reviews=[review])
    quick = a.agent("quick")
    assert quick is not None
    assert quick.guardrails == {"offer_below_floor": 1}
    assert a.guardrails_by_model == {GPT: 1}
    assert a.flags_by_kind == {
        "price_hallucination": 1, "leakage": 1, "constraint": 0, "coherence": 0
    }  # fmt: skip
    assert quick.flags == 1
    assert a.review is not None
    assert (a.review.model, a.review.text) == ("m:x", "Fine work.")
    assert full(ROOM_B).review is None


def test_empty_zone_and_a_possible_deal_missed() -> None:
    b = full(ROOM_B)
    assert (b.outcome, b.deal, b.efficiency) == ("no_deal", None, None)
    assert (b.surplus.floor, b.surplus.floor_seller, b.surplus.width) == (
        D("4.00"), "beta", D("-1.00")
    )  # fmt: skip
    assert b.surplus.empty
    assert b.surplus.seller_share is None
    assert "empty" in b.surplus.note
    assert "no deal was possible" in b.surplus.note
    c = full(ROOM_C)
    assert (c.outcome, c.rounds) == ("max_rounds", 2)
    assert (c.surplus.floor_seller, c.surplus.width, c.surplus.empty) == ("tech", D("3.50"), False)
    assert "none was made" in c.surplus.note
    assert (c.messages, c.buyer_messages) == (3, 1)


def test_bad_input_is_named() -> None:
    with pytest.raises(AnalysisError, match=r"no negotiation\.started"):
        analyze([RoundOpened(round=1)])
    with pytest.raises(AnalysisError, match="one per event"):
        analyze(logs.events_of(logs.room_a()), recorded_at=[logs.T0])


def row(rows: tuple[GroupRow, ...], key: str) -> GroupRow:
    return next(r for r in rows if r.key == key)


def test_report_figures_equal_the_hand_computed_ones() -> None:
    report = build_report(full(nid) for nid in (ROOM_A, ROOM_B, ROOM_C, ROOM_D))
    assert (report.negotiations, report.skipped) == (3, 1)  # D was aborted
    o = report.overall
    assert (o.rooms, o.deals, o.deal_rate) == (3, 1, 0.3333)
    assert (o.mean_saving_pct, o.mean_saving_vs_max_pct) == (6.25, 16.67)
    assert (o.mean_seller_share, o.mean_buyer_share) == (0.4444, 0.5556)
    assert (o.messages, o.flags, o.flags_per_100, o.guardrails) == (14, 3, 21.43, 1)
    assert o.flags_by_kind == {
        "price_hallucination": 1, "leakage": 2, "constraint": 0, "coherence": 0
    }  # fmt: skip

    claude, base = row(report.by_buyer_model, CLAUDE), row(report.by_buyer_model, BASE)
    assert (claude.rooms, claude.deals, claude.deal_rate, claude.mean_saving_pct) == (
        2, 1, 0.5, 6.25
    )  # fmt: skip
    assert (claude.messages, claude.flags, claude.flags_per_100) == (4, 1, 25.0)
    assert (base.rooms, base.deals, base.deal_rate, base.mean_saving_pct) == (1, 0, 0.0, None)
    assert (base.messages, base.flags, base.flags_per_100) == (2, 0, 0.0)

    gpt, rule = row(report.by_seller_model, GPT), row(report.by_seller_model, BASE)
    assert (gpt.rooms, gpt.deals, gpt.deal_rate, gpt.mean_seller_share) == (3, 1, 0.3333, 0.4444)
    assert (gpt.messages, gpt.flags, gpt.flags_per_100, gpt.guardrails) == (4, 2, 50.0, 1)
    assert (rule.rooms, rule.deals, rule.deal_rate, rule.mean_seller_share) == (3, 0, 0.0, None)
    assert (rule.messages, rule.flags, rule.flags_per_100) == (4, 0, 0.0)

    styles = {r.key: r for r in report.by_seller_style}
    assert set(styles) == {"sweet", "rude", "neutral"}
    sweet, rude, neutral = styles["sweet"], styles["rude"], styles["neutral"]
    assert (sweet.rooms, sweet.deals, sweet.deal_rate, sweet.messages, sweet.flags_per_100) == (
        2, 1, 0.5, 3, 33.33
    )  # fmt: skip
    assert (rude.rooms, rude.deals, rude.messages, rude.flags, rude.flags_per_100) == (
        3, 0, 4, 1, 25.0
    )  # fmt: skip
    assert (neutral.rooms, neutral.messages, neutral.flags) == (1, 1, 0)
    assert [r.negotiation_id for r in report.rooms] == [ROOM_A, ROOM_B, ROOM_C]
    assert report.rooms[0].seller == "@Quick"
    assert report.rooms[0].seller_share == 0.4444


def test_empty_report() -> None:
    report = build_report([])
    assert report.negotiations == 0
    assert report.overall.deal_rate is None
    assert report.overall.flags_per_100 is None


def test_aborted_and_unfinished_negotiations() -> None:
    d = full(ROOM_D)
    assert (d.status, d.outcome, d.rounds, d.messages, d.deal) == ("aborted", "no_deal", 1, 0, None)
    unfinished = analyze(logs.events_of(logs.room_a())[:8])  # stopped mid round 2
    assert (unfinished.status, unfinished.outcome, unfinished.rounds) == ("open", "open", 2)
    assert unfinished.deal is None
    assert unfinished.sellers[0].offers == (PricePoint(round=1, price=D("8.00")),)
    assert build_report([unfinished]).skipped == 1
