"""`mams report [--session ID]`: deal rate, savings, surplus split and flag rates across runs.

Reads every negotiation of one session (or of all sessions) from the log, analyses each
(`mams.domain.analysis`; flags are the grounded checks run now plus any stored ones,
nothing is written), aggregates them (`mams.domain.report`: what each figure means, and
why seller rows count seats) and prints the tables. It writes PNG plots to `--plots DIR`
(default `./mams-report/`; `--no-plots` skips them; see `mams.actors.report_plots`) and prints
their paths. Only ended (completed) negotiations are aggregated; aborted or still-open
ones are counted as `skipped`. Negotiations are those the `negotiation_runs` read model
lists (`mams import` writes it too, so imported negotiations are in). A chunk of
negotiations is read per query, and a large log is analysed in one process per core
(`--jobs N`; `mams.storage.parallel`). Exit status: 0; 2 for bad input.

`--json` prints one object on stdout (fractions 0..1, percentages in percent, prices as
JSON numbers; null where there is nothing to average):

    {"session_id": "..." | null, "negotiations": 12, "skipped": 0,
     "overall": {GROUP},
     "by_buyer_model": [{GROUP}, ...], "by_seller_model": [...], "by_seller_style": [...],
     "rooms": [{"negotiation_id", "session_id", "item_name", "outcome", "rounds",
                "buyer_brain", "seller": "@QuickTech" | null, "unit_price": 6.14 | null,
                "saving_pct": 23.25 | null, "seller_share": 0.07 | null, "messages", "flags"}],
     "plots": ["mams-report/trajectories.png", "mams-report/by_model.png", ...]}

    GROUP = {"group": "all" | "buyer_model" | "seller_model" | "seller_style",
             "key": "baseline (no LLM)", "rooms": 4, "deals": 3, "deal_rate": 0.75,
             "mean_saving_pct": 21.5, "mean_saving_vs_max_pct": 30.1,
             "mean_seller_share": 0.2, "mean_buyer_share": 0.8,
             "messages": 40, "flags": 2, "flags_per_100": 5.0,
             "flags_by_kind": {"price_hallucination": 0, "leakage": 2, "constraint": 0,
                               "coherence": 0},
             "guardrails": 1}
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio.to_thread
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from mams.analyze import AnalyzeUsageError, dump
from mams.cli_render import untrusted
from mams.domain.analysis import NegotiationAnalysis
from mams.domain.money import fmt
from mams.domain.report import GroupRow, Report, build_report
from mams.infra import servers
from mams.storage.analyses import analyses_of
from mams.storage.parallel import default_jobs, map_streams
from mams.storage.readmodels import Queries, has_session, interrupted_by_session, negotiation_ids


def add_parsers(sub: Any) -> None:
    """Add the report subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "report", help="deal rate, savings, surplus split, flag rates by model and style; plots"
    )
    p.add_argument("--session", help="only this session's negotiations (default: all)")
    p.add_argument(
        "--plots", default="mams-report", help="directory for the PNG plots (default mams-report)"
    )
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument(
        "--max-rooms",
        type=int,
        default=36,
        help="price trajectories for at most this many rooms (default 36, 9 per page)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="analyse in N processes (default: one per core, at most 8, for large logs)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


async def _ids(conn: Queries, session: UUID | None) -> list[UUID]:
    if session is not None and not await has_session(conn, session):
        raise AnalyzeUsageError(f"no session {session}; `mams sessions` lists stored sessions")
    return await negotiation_ids(conn, session)


def _parse_session(text: str | None) -> UUID | None:
    if text is None:
        return None
    try:
        return UUID(text)
    except ValueError:
        raise AnalyzeUsageError(
            f"--session: {text!r} is not a session id; `mams sessions` lists them"
        ) from None


async def cmd_report(args: argparse.Namespace, out: Console) -> int:
    """Aggregate negotiations into the report; print it and write the plots."""
    session = _parse_session(args.session)
    if args.max_rooms < 1:
        raise AnalyzeUsageError(f"--max-rooms must be at least 1, got {args.max_rooms}")
    plots_dir = None if args.no_plots else Path(args.plots)
    if plots_dir is not None and plots_dir.exists() and not plots_dir.is_dir():
        raise AnalyzeUsageError(f"--plots: {plots_dir} is a file; give a directory")
    if args.jobs is not None and args.jobs < 1:
        raise AnalyzeUsageError(f"--jobs must be at least 1 (got {args.jobs})")
    analysed: list[NegotiationAnalysis] = []
    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            ids = await _ids(conn, session)
            interrupted = await interrupted_by_session(conn, session)
        with Progress(
            TextColumn("reading negotiations"),
            BarColumn(),
            MofNCompleteColumn(),
            console=out,
            transient=True,
        ) as progress:
            task = progress.add_task("read", total=len(ids))
            async for chunk in map_streams(
                analyses_of,
                srv.store,
                ids,
                NegotiationAnalysis,
                dsn=srv.dsn,
                jobs=args.jobs or default_jobs(),
            ):
                analysed += chunk
                progress.advance(task, len(chunk))
    report = build_report(analysed)
    scope = f"session {session}" if session else "all sessions"
    render(out, report, scope)
    for sid, count in interrupted.items():
        out.print(
            f"[dim]{count} of the unfinished are interrupted (their run was killed); "
            f"finish them with:[/dim] mams run --session {sid} --resume"
        )
    paths: list[Path] = []
    if plots_dir is not None and report.negotiations:
        from mams.actors.report_plots import write_plots

        out.print(f"[dim]drawing plots into {plots_dir}/ ...[/dim]")
        paths = await anyio.to_thread.run_sync(
            lambda: write_plots(analysed, report, plots_dir, max_rooms=args.max_rooms)
        )
        for path in paths:
            out.print(f"plot: {path}")
    if args.json:
        body = msgspec.to_builtins(report, builtin_types=(Decimal,))
        body["session_id"] = str(session) if session else None
        body["plots"] = [str(p) for p in paths]
        dump(body)
    return 0


# -- rendering -------------------------------------------------------------------------------
def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def group_table(title: str, key: str, rows: tuple[GroupRow, ...], *, seats: bool) -> Table:
    """One group's rows as a rich table."""
    t = Table(title=title, title_style="bold", header_style="bold")
    t.add_column(key, overflow="fold", min_width=17)
    for col in (
        "seats" if seats else "rooms",
        "won (rate)" if seats else "deals (rate)",
        "saved/1st ask",
        "saved/max",
        "surplus s/b",
        "msgs",
        "flags (/100 msgs)",
        "rails",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        saved = "-" if r.mean_saving_pct is None else f"{r.mean_saving_pct:.2f}%"
        saved_max = "-" if r.mean_saving_vs_max_pct is None else f"{r.mean_saving_vs_max_pct:.2f}%"
        split = (
            "-"
            if r.mean_seller_share is None or r.mean_buyer_share is None
            else f"{r.mean_seller_share:.0%} / {r.mean_buyer_share:.0%}"
        )
        t.add_row(
            untrusted(r.key),
            str(r.rooms),
            f"{r.deals} ({_num(r.deal_rate, '.0%')})",
            saved,
            saved_max,
            split,
            str(r.messages),
            f"{r.flags} ({_num(r.flags_per_100, '.1f')})",
            str(r.guardrails),
        )
    return t


ROOMS_SHOWN = 30


def rooms_table(report: Report) -> Table:
    """The report's negotiations, one row each."""
    t = Table(title="Negotiations", title_style="bold", header_style="bold")
    for col in ("room", "item", "buyer model", "outcome", "seller", "unit price", "saved",
                "seller surplus", "msgs", "flags"):  # fmt: skip
        left = col in ("room", "item", "buyer model", "outcome", "seller")
        t.add_column(col, justify="left" if left else "right", overflow="fold")
    for r in report.rooms:
        t.add_row(
            str(r.negotiation_id)[:8],
            untrusted(r.item_name),
            untrusted(r.buyer_brain),
            untrusted(r.outcome),
            untrusted(r.seller or "-"),
            fmt(r.unit_price) if r.unit_price is not None else "-",
            "-" if r.saving_pct is None else f"{r.saving_pct:.2f}%",
            _num(r.seller_share, ".0%"),
            str(r.messages),
            str(r.flags),
        )
    return t


def render(out: Console, report: Report, scope: str) -> None:
    """Print the report for people."""
    if not report.negotiations:
        note = f" ({report.skipped} aborted or unfinished)" if report.skipped else ""
        out.print(f"no ended negotiations in {scope}{note}: `mams run SCENARIO` makes some")
        return
    skipped = f"; {report.skipped} aborted or unfinished skipped" if report.skipped else ""
    out.print(f"[bold]Report over {scope}[/bold]: {report.negotiations} negotiations{skipped}")
    if report.negotiations <= ROOMS_SHOWN:
        out.print(rooms_table(report))
    else:
        out.print(f"[dim]{report.negotiations} negotiations: `--json` lists each one[/dim]")
    out.print(group_table("Overall", "scope", (report.overall,), seats=False))
    out.print(group_table("By buyer model", "buyer model", report.by_buyer_model, seats=False))
    out.print(
        group_table(
            "By seller model (a seat = one seller in one room; won = seats that got the deal)",
            "seller model",
            report.by_seller_model,
            seats=True,
        )
    )
    out.print(group_table("By seller style", "style", report.by_seller_style, seats=True))
    out.print(
        "[dim]saved: the buyer's mean saving per deal against the winning seller's first ask "
        "and against its own max; surplus s/b: the mean split (seller / buyer) of "
        "\\[seller floor, buyer max]; rails: guardrail interventions[/dim]"
    )
