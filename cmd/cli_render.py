"""What people and programs read: rich transcripts and tables, and the JSON shapes.

JSON shapes (documented in README.md):
  outcome: {"type": "deal"|"no_deal"|"max_rounds", "seller": str|null,
            "unit_price": number|null, "quantity": int|null, "rounds": int}
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Self
from uuid import UUID

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mams.domain.analysis import LLMUsageSum
from mams.domain.events import Event, NegotiationEnded, QualityFlagged
from mams.domain.money import fmt
from mams.domain.negotiation import NegotiationState
from mams.domain.transcript import Entry

_KIND_STYLE = {
    "open": "bold",
    "round": "dim",
    "buyer": "cyan",
    "seller": "green",
    "deal": "bold green",
    "walk": "bold red",
    "end": "bold",
    "guardrail": "yellow",
    "note": "dim italic",
}
# Characters a terminal acts on or hides rather than shows: C0/C1 controls (ESC starts CSI
# and OSC sequences that move the cursor, clear the screen, retitle the window or write
# the clipboard), format characters (bidi overrides and isolates, zero-width and tag
# characters, which reorder or hide text), lone surrogates (which cannot be encoded, so
# printing them raises) and the line/paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_KEPT = frozenset("\n\t")


def untrusted(text: str) -> str:
    """`text` from an agent (or anything else from outside) made safe to print: every
    control, format or separator character but newline and tab becomes its visible
    Python escape (`\\x1b`, `\\u202e`, `\\U000e0041`), and rich markup is escaped, so it
    prints as written. For markup strings (`Console.print`, table cells); inside a `Text`
    use `untrusted_text`. Every place the CLI prints agent-controlled text goes through it.
    """
    return escape(_shown(text))


def untrusted_text(text: str, style: str = "") -> Text:
    """`text` made safe as `untrusted` does, as a rich Text (never read as markup)."""
    return Text(_shown(text), style=style)


def _shown(text: str) -> str:
    """Every character a terminal would act on or hide, as its visible escape."""
    if text.isprintable():
        return text
    return "".join(
        _visible(ch) if ch not in _KEPT and unicodedata.category(ch) in _HIDDEN else ch
        for ch in text
    )


def _visible(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_ROOM_COLOURS = ["magenta", "blue", "dark_orange", "cyan", "green", "red", "purple", "yellow"]


def room_tag(item: str, index: int) -> Text:
    """A coloured tag naming an item's room, so interleaved rooms stay readable."""
    return untrusted_text(f"[{item}]", style=f"bold {_ROOM_COLOURS[index % len(_ROOM_COLOURS)]}")


def print_entry(console: Console, entry: Entry, tag: Text | None = None) -> None:
    """One transcript line, styled by kind (what agents wrote shown as written)."""
    line = Text()
    if tag is not None:
        line.append_text(tag)
        line.append(" ")
    if entry.kind == "round":
        line.append(
            f"-- round {entry.round}{' (final)' if 'final' in entry.text else ''} --", style="dim"
        )
        console.print(line)
        return
    if entry.round:
        line.append(f"r{entry.round} ", style="dim")
    style = _KIND_STYLE.get(entry.kind, "")
    if entry.speaker:
        line.append_text(untrusted_text(entry.speaker, style=f"bold {style}"))
        if entry.audience:
            line.append_text(untrusted_text(f" -> {entry.audience}", style="dim"))
        line.append(": ")
        line.append_text(untrusted_text(entry.text))
    else:
        line.append_text(untrusted_text(entry.text, style=style))
    console.print(line)


def outcome_json(state: NegotiationState) -> dict[str, Any]:
    """The outcome of a negotiation in the documented JSON shape (seller as its handle)."""
    o = state.outcome
    if o is None:
        return {
            "type": "no_deal",
            "seller": None,
            "unit_price": None,
            "quantity": None,
            "rounds": state.round,
        }
    seller = state.seller(o.seller) if o.seller else None
    return {
        "type": o.type,
        "seller": seller.handle if seller else o.seller,
        "unit_price": o.unit_price,
        "quantity": o.quantity,
        "rounds": o.rounds,
    }


def status_of(state: NegotiationState) -> str:
    """ "completed" or "aborted" (an unfinished negotiation counts as aborted)."""
    return state.ended.status if state.ended else "aborted"


def savings(state: NegotiationState) -> tuple[Decimal, Decimal] | None:
    """For a deal: money saved against the winning seller's first ask, and the percent."""
    o = state.outcome
    if o is None or o.type != "deal" or o.seller is None or o.unit_price is None:
        return None
    first = state.first_asks.get(o.seller)
    if first is None or first == 0:
        return None
    per_unit = first - o.unit_price
    return per_unit * (o.quantity or 0), (per_unit / first * 100).quantize(Decimal("0.1"))


def outcomes_table(rows: list[tuple[str, NegotiationState]]) -> Table:
    """The table of outcomes printed after a run and by replay."""
    table = Table(title="Outcomes", title_style="bold", header_style="bold")
    for col, justify in (
        ("item", "left"),
        ("status", "left"),
        ("outcome", "left"),
        ("seller", "left"),
        ("unit price", "right"),
        ("qty", "right"),
        ("total", "right"),
        ("rounds", "right"),
        ("saved vs first ask", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for item, state in rows:
        o = outcome_json(state)
        colour = {"deal": "green", "no_deal": "red", "max_rounds": "yellow"}[o["type"]]
        saved = savings(state)
        total = (o["unit_price"] * o["quantity"]) if o["unit_price"] is not None else None
        table.add_row(
            untrusted(item),
            status_of(state),
            Text(o["type"], style=colour),
            untrusted(o["seller"] or "-"),
            fmt(o["unit_price"]) if o["unit_price"] is not None else "-",
            str(o["quantity"]) if o["quantity"] is not None else "-",
            fmt(total) if total is not None else "-",
            str(o["rounds"]),
            f"{fmt(saved[0])} ({saved[1]}%)" if saved else "-",
        )
    return table


# A run of more rooms than this shows a progress bar instead of every message
# (`mams run --transcript` prints them anyway); several runs, or more than TABLE_ROOMS
# rooms, are summed up by item instead of listed one by one.
TRANSCRIPT_ROOMS = 6
TABLE_ROOMS = 20


def items_table(rows: list[tuple[str, NegotiationState]]) -> Table:
    """Outcomes summed up by item, for a run of many rooms (`--runs`, or many items)."""
    by_item: dict[str, list[NegotiationState]] = {}
    for item, state in rows:
        by_item.setdefault(item, []).append(state)
    table = Table(
        title="Outcomes by item (prices and savings over deals)",
        title_style="bold",
        header_style="bold",
    )
    for col in ("item", "rooms", "deals", "no deal", "max rounds", "aborted", "unit price"):
        table.add_column(col, justify="left" if col == "item" else "right")
    for col in ("range", "rounds", "saved vs ask"):
        table.add_column(col, justify="right")
    for item, states in by_item.items():
        outcomes = [outcome_json(s) for s in states]
        kinds = [o["type"] for o in outcomes]
        prices = [o["unit_price"] for o in outcomes if o["type"] == "deal"]
        saved = [got[1] for s in states if (got := savings(s)) is not None]
        table.add_row(
            untrusted(item),
            str(len(states)),
            Text(str(kinds.count("deal")), style="green"),
            str(kinds.count("no_deal")),
            str(kinds.count("max_rounds")),
            str(sum(status_of(s) == "aborted" for s in states)),
            fmt(_mean(prices)) if prices else "-",
            f"{fmt(min(prices))}-{fmt(max(prices))}" if prices else "-",
            f"{sum(o['rounds'] for o in outcomes) / len(outcomes):.1f}",
            f"{_mean(saved).quantize(Decimal('0.1'))}%" if saved else "-",
        )
    return table


def _mean(values: Sequence[Decimal]) -> Decimal:
    return (sum(values, Decimal(0)) / len(values)).quantize(Decimal("0.01"))


class RunProgress:
    """A progress bar for a run of too many rooms to print every message: rooms ended of
    all, deals so far, rooms still running. Use as a context manager."""

    def __init__(self, out: Console, total: int) -> None:
        self._progress = Progress(
            TextColumn("negotiating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rooms ended, {task.fields[deals]} deals"),
            TimeElapsedColumn(),
            console=out,
            transient=True,
        )
        self._task = self._progress.add_task("run", total=total, deals=0)
        self.ended = 0
        self.deals = 0

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def event(self, event: Event) -> None:
        """Count a committed event: an ended room moves the bar."""
        if isinstance(event, NegotiationEnded):
            self.room_ended(event.outcome.type == "deal")

    def room_ended(self, deal: bool) -> None:
        """One more room ended (a deal or not)."""
        self.ended += 1
        self.deals += deal
        self._progress.update(self._task, completed=self.ended, deals=self.deals)


class LLMUsage(LLMUsageSum):
    """Totals of the model calls seen in a run (from `llm.called` events), summed by the
    analysis's rule (`mams.domain.analysis.LLMUsageSum`); this adds the line a run prints."""

    def summary(self) -> str:
        """One line: calls, tokens, cache hits, estimated cost."""
        cost = f"~${self.cost:.4f}" if self.cost_known else "cost unknown for this model"
        extra = f", {self.failed} failed" if self.failed else ""
        extra += f", {self.retries} retries" if self.retries else ""
        return (
            f"{self.calls} calls{extra}; {self.input_tokens:,} input tokens "
            f"({self.cache_read_tokens:,} from cache), {self.output_tokens:,} output; "
            f"{cost} (estimate)"
        )


_SEVERITY_STYLE = {"low": "yellow", "medium": "dark_orange", "high": "bold red"}


def print_flag(console: Console, flag: QualityFlagged, tag: Text | None = None) -> None:
    """A quality finding as the monitor raises it, inline with the transcript."""
    line = Text()
    if tag is not None:
        line.append_text(tag)
        line.append(" ")
    line.append(f"r{flag.round} ", style="dim")
    severity = _SEVERITY_STYLE.get(flag.severity, "")
    line.append_text(untrusted_text(f"! {flag.severity} {flag.rule}", style=severity))
    line.append_text(untrusted_text(f": {flag.detail}", style="italic"))
    console.print(line)


def flag_counts(flags: Sequence[QualityFlagged]) -> dict[str, int]:
    """Quality flags counted by kind (JSON: {"leakage": 1, ...}; kinds with none omitted)."""
    counts: dict[str, int] = {}
    for flag in flags:
        counts[flag.kind] = counts.get(flag.kind, 0) + 1
    return dict(sorted(counts.items()))


def quality_summary(flags: Mapping[UUID, Sequence[QualityFlagged]]) -> str:
    """One line on what the quality monitor found across a run's rooms."""
    every = [f for found in flags.values() for f in found]
    if not every:
        return "no quality flags (grounded checks: hallucinated prices, leaks, coherence)"
    kinds = ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in flag_counts(every).items())
    worst = next((nid for nid, found in flags.items() if found), None)
    return f"{len(every)} flag(s): {kinds}; details: mams analyze {worst}"
