"""`mams analyze NEGOTIATION_ID`: what one negotiation's log says about how it went.

Reads the negotiation's events (an id or its first characters), runs the grounded
quality checks (`mams.domain.quality.check`) and records the findings the companion
stream lacks, adds the LLM analyst's review when an analyst model is configured (a
stored review is reused: any one without `--analyst-model`, that model's with it; a new
one is recorded), and prints `mams.domain.analysis.analyze`'s figures. Without an analyst
model the analysis is the computed metrics alone, and says so. Exit status: 0; 2 for bad
input or an analyst model whose provider is not configured.

`--json` prints one object on stdout: every field of `NegotiationAnalysis`
(`domain/analysis.py`) plus `analyst`. Prices are exact decimals as JSON numbers, shares
are fractions (0..1), percentages are percent:

    {"negotiation_id": "...", "session_id": "...", "item_name": "USB-C cable",
     "status": "completed" | "aborted" | "open",
     "outcome": "deal" | "no_deal" | "max_rounds" | "open",
     "rounds": 5, "max_rounds": 8, "buyer_quantity": 3,
     "buyer_min_price": 4.0, "buyer_max_price": 9.0,
     "messages": 12, "buyer_messages": 5, "seller_messages": 7,
     "latency_measured": true,
     "agents": [{"agent": "buyer", "handle": "@Buyer", "side": "buyer" | "seller",
                 "brain": "baseline (no LLM)", "style": "" | "rude" | ...,
                 "messages": 5, "latency_ms_mean": 12.5 | null, "latency_ms_max": 40.1 | null,
                 "llm_calls": 0, "input_tokens": 0, "output_tokens": 0,
                 "cost_usd": 0.0 | null, "guardrails": {"offer_below_floor": 1}, "flags": 0}],
     "llm": {"calls": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0,
             "cost_usd": 0.0 | null},
     "sellers": [{"agent", "handle", "style", "brain", "least_price", "selling_price",
                  "first_ask": 8.0 | null, "final_offer": 6.14 | null,
                  "offers": [{"round": 1, "price": 8.0}, ...]}],
     "buyer_counters": [{"round": 2, "price": 5.0}, ...],
     "deal": null | {"seller", "handle", "round", "unit_price", "quantity", "total",
                     "first_ask", "saving_vs_first_ask", "saving_vs_first_ask_pct",
                     "saving_vs_max", "saving_vs_max_pct"},
     "surplus": {"floor", "floor_seller", "ceiling", "width", "empty",
                 "seller_share": 0.44 | null, "buyer_share": 0.56 | null, "note": "..."},
     "efficiency": null | {"cheapest_offer", "cheapest_sellers": [...], "took_cheapest",
                           "overpaid_per_unit", "lowest_floor", "lowest_floor_seller",
                           "above_lowest_floor_per_unit"},
     "guardrails_by_model": {"openai:gpt-5.5": 2},
     "flags_by_kind": {"price_hallucination": 0, "leakage": 1, "constraint": 0,
                       "coherence": 0},
     "flags": [{"type": "quality.flagged", "kind", "rule", "severity", "agent", "round",
                "evidence": [...], "detail", "brain", "style", "negotiation_id"}],
     "review": null | {"model": "openrouter:google/gemini-2.5-flash", "text": "..."},
     "analyst": {"status": "new" | "stored" | "failed" | "off", "model": str | null,
                 "note": "..."}}

Latencies come from the log's commit times (see `domain/analysis.py`); flags are this
run's checks plus any stored ones (the live monitor's).
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from mams.audit import resolve_negotiation
from mams.cli_render import untrusted
from mams.domain.analysis import NegotiationAnalysis, analyze
from mams.domain.errors import ConfigError
from mams.domain.events import (
    AnalystReviewed,
    Event,
    QualityFlagged,
)
from mams.domain.money import fmt
from mams.infra import servers
from mams.storage.analyses import merge_flags, negotiation_of
from mams.storage.eventstore import EventStore
from mams.storage.observations import load_observations, record_observations

_json = msgspec.json.Encoder(decimal_format="number")


class AnalyzeUsageError(ConfigError):
    """Bad input for analyze/report; the CLI exits with status 2."""


def add_parsers(sub: Any) -> None:
    """Add the analyze subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "analyze", help="analyse one negotiation: savings, surplus split, latency, flags, review"
    )
    p.add_argument("negotiation_id", help="negotiation id (or its first characters)")
    p.add_argument(
        "--analyst-model",
        help='the LLM analyst ("provider:model", e.g. openrouter:google/gemini-2.5-flash, '
        'or "none"); default MAMS_ANALYST_MODEL, else the configured provider\'s default',
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def dump(obj: object) -> None:
    """Write one JSON object (exact decimals as numbers) and a newline to stdout."""
    sys.stdout.write(_json.encode(obj).decode() + "\n")
    sys.stdout.flush()


async def load_negotiation(store: EventStore, nid: UUID) -> tuple[list[Event], list[Any]]:
    """A negotiation's decoded events and their commit times; bad ids say what to do."""
    return negotiation_of(nid, await store.read(nid))


async def _review(
    events: list[Event],
    flags: list[QualityFlagged],
    reviews: list[AnalystReviewed],
    override: str | None,
    obs_store: EventStore,
    nid: UUID,
) -> tuple[list[AnalystReviewed], dict[str, Any]]:
    """The review to show (reused or new) and the `analyst` status object."""
    from mams.actors.analyst import NO_ANALYST, AnalystError, analyst_model, review_negotiation

    spec = analyst_model(override)
    if spec is None:
        if reviews:
            note = f"stored review by {reviews[-1].model}; no analyst model configured now"
            return reviews[-1:], {"status": "stored", "model": reviews[-1].model, "note": note}
        return [], {"status": "off", "model": None, "note": NO_ANALYST}
    reusable = [r for r in reviews if override is None or r.model == spec]
    if reusable:
        note = f"stored review by {reusable[-1].model} (reused, not re-asked)"
        return reusable[-1:], {"status": "stored", "model": reusable[-1].model, "note": note}
    try:
        review = await review_negotiation(events, flags, spec)
    except AnalystError as exc:
        note = f"the analyst ({spec}) failed: {exc}; computed metrics only"
        return [], {"status": "failed", "model": spec, "note": note}
    await record_observations(obs_store, nid, [review])
    return [review], {"status": "new", "model": review.model, "note": "new review, recorded"}


async def cmd_analyze(args: argparse.Namespace, out: Console) -> int:
    """Analyse one negotiation; print it (rich) or one JSON object."""
    from mams.domain.quality import check

    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            nid = await resolve_negotiation(conn, args.negotiation_id)
        events, times = await load_negotiation(srv.store, nid)
        observed = await load_observations(srv.store, nid)
        fresh = check(events)
        new = await record_observations(srv.store, nid, fresh)
        flags = merge_flags([o for o in observed if isinstance(o, QualityFlagged)], fresh)
        reviews = [o for o in observed if isinstance(o, AnalystReviewed)]
        shown, analyst = await _review(events, flags, reviews, args.analyst_model, srv.store, nid)
    analysis = analyze(events, flags, shown, times)
    render(out, analysis, analyst, recorded=new)
    if args.json:
        body = msgspec.to_builtins(analysis, builtin_types=(Decimal,))
        body["analyst"] = analyst
        dump(body)
    return 0


# -- rendering -------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _money(value: Any) -> str:
    return "-" if value is None else fmt(value)


def _llm_cell(calls: int, tokens_in: int, tokens_out: int, cost: float | None) -> str:
    if not calls:
        return "-"
    money = "cost unknown" if cost is None else f"${cost:.4f}"
    return f"{calls} calls, {tokens_in:,}/{tokens_out:,} tok, {money}"


def _agents_table(a: NegotiationAnalysis) -> Table:
    t = Table(title="Agents", title_style="bold", header_style="bold")
    for col in ("agent", "brain", "style", "msgs", "latency ms mean/max", "LLM", "guardrails",
                "flags"):  # fmt: skip
        t.add_column(
            col,
            justify="right" if col in ("msgs", "latency ms mean/max", "flags") else "left",
            overflow="fold",
        )
    for g in a.agents:
        rails = ", ".join(f"{k} x{v}" for k, v in g.guardrails.items()) or "-"
        t.add_row(
            untrusted(g.handle),
            untrusted(g.brain),
            untrusted(g.style or "-"),
            str(g.messages),
            f"{_ms(g.latency_ms_mean)} / {_ms(g.latency_ms_max)}",
            _llm_cell(g.llm_calls, g.input_tokens, g.output_tokens, g.cost_usd),
            untrusted(rails),
            str(g.flags),
        )
    return t


def _prices_table(a: NegotiationAnalysis) -> Table:
    t = Table(title="Prices (private floors from the log)", title_style="bold", header_style="bold")
    for col in ("seller", "floor", "asking", "first offer", "final offer", "offers by round"):
        t.add_column(col, justify="left" if col in ("seller", "offers by round") else "right")
    for s in a.sellers:
        path = " -> ".join(f"r{p.round} {fmt(p.price)}" for p in s.offers) or "no offer"
        t.add_row(
            untrusted(s.handle),
            fmt(s.least_price),
            fmt(s.selling_price),
            _money(s.first_ask),
            _money(s.final_offer),
            path,
        )
    return t


def _summary_lines(a: NegotiationAnalysis) -> list[str]:
    handle = {g.agent: g.handle for g in a.agents}
    lines = [
        f"[bold]{untrusted(a.item_name)}[/bold]  {a.negotiation_id}",
        f"{untrusted(a.outcome)} ({untrusted(a.status)}) after {a.rounds} of "
        f"{a.max_rounds} rounds; buyer wants "
        f"{a.buyer_quantity} within {fmt(a.buyer_min_price)}..{fmt(a.buyer_max_price)}",
        f"{a.messages} messages ({a.buyer_messages} buyer, {a.seller_messages} sellers)",
    ]
    d = a.deal
    if d is not None:
        first = (
            f"{_money(d.saving_vs_first_ask)}/unit ({d.saving_vs_first_ask_pct}%) vs its "
            f"first ask {_money(d.first_ask)}"
            if d.first_ask is not None
            else "no first ask before the deal"
        )
        lines.append(
            f"[green]deal[/green] with {untrusted(d.handle)} at {fmt(d.unit_price)} x "
            f"{d.quantity} = "
            f"{fmt(d.total)} in round {d.round}; saved {first}; {fmt(d.saving_vs_max)}/unit "
            f"({d.saving_vs_max_pct}%) under the buyer's max"
        )
    lines.append(f"surplus: {untrusted(a.surplus.note)}")
    e = a.efficiency
    if e is not None:
        cheapest = (
            "took the cheapest standing offer"
            if e.took_cheapest
            else f"[yellow]paid {fmt(e.overpaid_per_unit)}/unit more[/yellow] than the cheapest "
            f"standing offer ({fmt(e.cheapest_offer)} from "
            f"{untrusted(', '.join(handle[s] for s in e.cheapest_sellers))})"
        )
        lines.append(
            f"efficiency: {cheapest}; {fmt(e.above_lowest_floor_per_unit)}/unit above the "
            f"lowest floor in the room ({fmt(e.lowest_floor)}, "
            f"{untrusted(handle[e.lowest_floor_seller])})"
        )
    llm = a.llm
    if llm.calls:
        total = _llm_cell(llm.calls, llm.input_tokens, llm.output_tokens, llm.cost_usd)
        lines.append(f"LLM: {total}, {llm.failed} failed")
    if not a.latency_measured:
        lines.append("[dim]latency: no commit times available[/dim]")
    return lines


def _flags_table(a: NegotiationAnalysis) -> Table:
    kinds = ", ".join(f"{k} {n}" for k, n in a.flags_by_kind.items())
    t = Table(title=f"Quality flags ({kinds})", title_style="bold", header_style="bold")
    for col in ("kind", "severity", "agent", "round", "rule", "detail"):
        t.add_column(col, overflow="fold")
    for f in a.flags:
        t.add_row(
            untrusted(f.kind),
            untrusted(f.severity),
            untrusted(f.agent),
            str(f.round),
            untrusted(f.rule),
            untrusted(f.detail),
        )
    return t


def render(out: Console, a: NegotiationAnalysis, analyst: dict[str, Any], *, recorded: int) -> None:
    """Print an analysis for people."""
    out.print(Panel("\n".join(_summary_lines(a)), title="Negotiation analysis", expand=False))
    out.print(_agents_table(a))
    out.print(_prices_table(a))
    if a.guardrails_by_model:
        by_model = ", ".join(f"{m}: {n}" for m, n in a.guardrails_by_model.items())
        out.print(f"guardrail interventions by model: {untrusted(by_model)}")
    if a.flags:
        out.print(_flags_table(a))
    else:
        out.print("[green]no quality flags[/green]")
    if recorded:
        out.print(f"[dim]{recorded} new flag(s) recorded in the log[/dim]")
    if a.review is not None:
        body = Group(untrusted(a.review.text), f"[dim]{untrusted(analyst['note'])}[/dim]")
        out.print(Panel(body, title=f"Analyst review ({untrusted(a.review.model)})", expand=False))
    else:
        out.print(f"[dim]{untrusted(analyst['note'])}[/dim]")
