"""The report's PNG plots, drawn with matplotlib (Agg, no display, no pyplot state).

- `trajectories.png` (and `trajectories-2.png`, ... past 9 rooms a page): per room, each
  seller's offers by round as a line, the buyer's counters in black, each seller's floor
  and the buyer's max as dashed lines, the deal as a star.
- `by_model.png`: deal rate, surplus split and flags per 100 messages, by buyer model
  (top row) and by seller model (bottom row).
- `by_style.png`: the same three by seller style.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mams.domain.analysis import NegotiationAnalysis
from mams.domain.report import GroupRow, Report

PER_PAGE = 9
_SELLER = "#c0392b"
_BUYER = "#2e86c1"


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _room(ax: Axes, a: NegotiationAnalysis) -> None:
    for i, s in enumerate(a.sellers):
        colour = f"C{i % 10}"
        if s.offers:
            ax.plot(
                [p.round for p in s.offers],
                [float(p.price) for p in s.offers],
                marker="o",
                color=colour,
                label=s.handle,
            )
        ax.axhline(float(s.least_price), color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
    if a.buyer_counters:
        ax.plot(
            [p.round for p in a.buyer_counters],
            [float(p.price) for p in a.buyer_counters],
            marker="s",
            color="black",
            label="buyer counter",
        )
    ax.axhline(float(a.buyer_max_price), color="black", linestyle="--", linewidth=1.0)
    if a.deal is not None:
        ax.plot(
            [a.deal.round],
            [float(a.deal.unit_price)],
            marker="*",
            markersize=14,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            label="deal",
        )
    ax.set_title(f"{_short(a.item_name)} ({str(a.negotiation_id)[:8]}): {a.outcome}", fontsize=9)
    ax.set_xlabel("round", fontsize=8)
    ax.set_ylabel("unit price", fontsize=8)
    ax.set_xlim(0.5, max(a.rounds, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best")


def trajectories(analyses: Sequence[NegotiationAnalysis], out_dir: Path) -> list[Path]:
    """Price trajectory pages, 9 rooms each; the files written."""
    paths: list[Path] = []
    for page, start in enumerate(range(0, len(analyses), PER_PAGE), start=1):
        rooms = analyses[start : start + PER_PAGE]
        cols = min(3, len(rooms))
        rows = (len(rooms) + cols - 1) // cols
        fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
        fig.suptitle("Price trajectories (dashed: each seller's floor, black: the buyer's max)")
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < len(rooms):
                _room(ax, rooms[i])
            else:
                ax.set_axis_off()
        path = out_dir / ("trajectories.png" if page == 1 else f"trajectories-{page}.png")
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def _bars(ax: Axes, rows: Sequence[GroupRow], what: str, title: str) -> None:
    labels = [_short(r.key, 34) for r in rows]
    ys = list(range(len(rows)))
    if what == "deal_rate":
        values = [r.deal_rate or 0.0 for r in rows]
        ax.barh(ys, values, color=_BUYER)
        ax.set_xlim(0, 1)
        for y, r, v in zip(ys, rows, values, strict=True):
            ax.text(min(v, 0.85) + 0.01, y, f"{r.deals}/{r.rooms}", va="center", fontsize=7)
    elif what == "surplus":
        seller = [r.mean_seller_share or 0.0 for r in rows]
        buyer = [r.mean_buyer_share or 0.0 for r in rows]
        ax.barh(ys, seller, color=_SELLER, label="seller share")
        ax.barh(ys, buyer, left=seller, color=_BUYER, label="buyer share")
        ax.set_xlim(0, 1)
        for y, r in zip(ys, rows, strict=True):
            if r.mean_seller_share is None:
                ax.text(0.01, y, "no deal", va="center", fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
    else:
        rates = [r.flags_per_100 or 0.0 for r in rows]
        top = max([*rates, 1.0]) * 1.15
        ax.barh(ys, rates, color="#7d3c98")
        ax.set_xlim(0, top)
        for y, r, v in zip(ys, rows, rates, strict=True):
            ax.text(v + top * 0.01, y, f"{r.flags} in {r.messages}", va="center", fontsize=7)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)


_PANELS = (
    ("deal_rate", "deal rate"),
    ("surplus", "mean surplus split"),
    ("flags", "flags per 100 messages"),
)


def _grid(groups: Sequence[tuple[str, Sequence[GroupRow]]], path: Path, title: str) -> Path:
    height = sum(max(1.6, 0.45 * len(rows) + 1.0) for _, rows in groups)
    fig = Figure(figsize=(13, height + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(groups), len(_PANELS), squeeze=False)
    for (name, rows), line in zip(groups, axes, strict=True):
        for (what, label), ax in zip(_PANELS, line, strict=True):
            if rows:
                _bars(ax, rows, what, f"{label} by {name}")
            else:
                ax.set_axis_off()
    fig.savefig(path, dpi=100)
    return path


def write_plots(
    analyses: Sequence[NegotiationAnalysis], report: Report, out_dir: Path, *, max_rooms: int
) -> list[Path]:
    """Every plot of the report into `out_dir` (created); the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ended = [a for a in analyses if a.status == "completed"][:max_rooms]
    paths = trajectories(ended, out_dir) if ended else []
    paths.append(
        _grid(
            [("buyer model", report.by_buyer_model), ("seller model", report.by_seller_model)],
            out_dir / "by_model.png",
            "By model (seller rows: a seat is one seller in one room; deal rate = seats won)",
        )
    )
    paths.append(
        _grid(
            [("seller style", report.by_seller_style)],
            out_dir / "by_style.png",
            "By seller style",
        )
    )
    return paths
