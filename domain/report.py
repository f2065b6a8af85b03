"""Across runs: deal rate, savings, surplus split and flag rates, grouped by who negotiated.

`build_report(analyses)` aggregates `NegotiationAnalysis`es of ended negotiations (those
still open or aborted are counted as skipped: an interrupted room says nothing about how
agents negotiate). Groups:

- **by buyer model**: one row per buyer brain; `rooms` are negotiations, `deals` those
  that closed with a deal.
- **by seller model** and **by seller style**: one row per seller brain or style; `rooms`
  are seats (one seller in one room), `deals` the seats that won the deal, so
  `deal_rate` is how often a seller of that kind won the room it sat in.

In every row, savings and surplus shares are means over that row's deals (savings
against the deal seller's first ask and against the buyer's max, in percent; the
seller's share of the surplus over deals whose zone has a width), and `messages`,
`flags` and `guardrails` count only what the row's agents wrote or were flagged for, so
`flags_per_100` is flags per 100 of their own messages. Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec

from mams.domain.analysis import FLAG_KINDS, AgentStats, NegotiationAnalysis

GroupKind = Literal["all", "buyer_model", "seller_model", "seller_style"]


class GroupRow(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregates over one group of negotiations (or seats); None where nothing to average."""

    group: GroupKind
    key: str
    rooms: int
    deals: int
    deal_rate: float | None
    mean_saving_pct: float | None
    mean_saving_vs_max_pct: float | None
    mean_seller_share: float | None
    mean_buyer_share: float | None
    messages: int
    flags: int
    flags_per_100: float | None
    flags_by_kind: dict[str, int]
    guardrails: int


class RoomRow(msgspec.Struct, frozen=True, kw_only=True):
    """One negotiation in a report."""

    negotiation_id: UUID
    session_id: UUID
    item_name: str
    outcome: str
    rounds: int
    buyer_brain: str
    seller: str | None
    unit_price: Decimal | None
    saving_pct: float | None
    seller_share: float | None
    messages: int
    flags: int


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The cross-run report (JSON: `cmd/report.py`)."""

    negotiations: int
    skipped: int
    overall: GroupRow
    by_buyer_model: tuple[GroupRow, ...]
    by_seller_model: tuple[GroupRow, ...]
    by_seller_style: tuple[GroupRow, ...]
    rooms: tuple[RoomRow, ...]


class _Acc:
    """Running sums for one group."""

    def __init__(self) -> None:
        self.rooms = 0
        self.deals = 0
        self.savings: list[float] = []
        self.savings_max: list[float] = []
        self.seller_shares: list[float] = []
        self.buyer_shares: list[float] = []
        self.messages = 0
        self.flags: Counter[str] = Counter()
        self.guardrails = 0

    def room(self, a: NegotiationAnalysis, *, won: bool) -> None:
        self.rooms += 1
        if not won or a.deal is None:
            return
        self.deals += 1
        if a.deal.saving_vs_first_ask_pct is not None:
            self.savings.append(a.deal.saving_vs_first_ask_pct)
        self.savings_max.append(a.deal.saving_vs_max_pct)
        if a.surplus.seller_share is not None and a.surplus.buyer_share is not None:
            self.seller_shares.append(a.surplus.seller_share)
            self.buyer_shares.append(a.surplus.buyer_share)

    def agent(self, a: NegotiationAnalysis, agent: AgentStats) -> None:
        self.messages += agent.messages
        self.guardrails += sum(agent.guardrails.values())
        self.flags.update(f.kind for f in a.flags if f.agent == agent.agent)

    def row(self, group: GroupKind, key: str) -> GroupRow:
        flags = sum(self.flags.values())
        return GroupRow(
            group=group,
            key=key,
            rooms=self.rooms,
            deals=self.deals,
            deal_rate=round(self.deals / self.rooms, 4) if self.rooms else None,
            mean_saving_pct=_mean(self.savings, 2),
            mean_saving_vs_max_pct=_mean(self.savings_max, 2),
            mean_seller_share=_mean(self.seller_shares, 4),
            mean_buyer_share=_mean(self.buyer_shares, 4),
            messages=self.messages,
            flags=flags,
            flags_per_100=round(flags / self.messages * 100, 2) if self.messages else None,
            flags_by_kind={k: self.flags[k] for k in FLAG_KINDS},
            guardrails=self.guardrails,
        )


def _mean(values: Sequence[float], places: int) -> float | None:
    return round(sum(values) / len(values), places) if values else None


def _rows(group: GroupKind, accs: dict[str, _Acc]) -> tuple[GroupRow, ...]:
    return tuple(accs[k].row(group, k) for k in sorted(accs))


def build_report(analyses: Iterable[NegotiationAnalysis]) -> Report:
    """Aggregate analyses into the report (see the module docstring for every figure)."""
    overall = _Acc()
    buyers: dict[str, _Acc] = {}
    seller_models: dict[str, _Acc] = {}
    styles: dict[str, _Acc] = {}
    rooms: list[RoomRow] = []
    skipped = 0
    for a in analyses:
        if a.status != "completed":
            skipped += 1
            continue
        buyer = a.agents[0]
        overall.room(a, won=True)
        buyers.setdefault(buyer.brain, _Acc()).room(a, won=True)
        buyers[buyer.brain].agent(a, buyer)
        overall.messages += a.messages
        overall.guardrails += sum(sum(g.guardrails.values()) for g in a.agents)
        overall.flags.update(f.kind for f in a.flags)
        for agent in a.agents:
            if agent.side != "seller":
                continue
            won = a.deal is not None and a.deal.seller == agent.agent
            for accs, key in ((seller_models, agent.brain), (styles, agent.style)):
                acc = accs.setdefault(key, _Acc())
                acc.room(a, won=won)
                acc.agent(a, agent)
        rooms.append(
            RoomRow(
                negotiation_id=a.negotiation_id,
                session_id=a.session_id,
                item_name=a.item_name,
                outcome=a.outcome,
                rounds=a.rounds,
                buyer_brain=buyer.brain,
                seller=a.deal.handle if a.deal else None,
                unit_price=a.deal.unit_price if a.deal else None,
                saving_pct=a.deal.saving_vs_first_ask_pct if a.deal else None,
                seller_share=a.surplus.seller_share if a.deal else None,
                messages=a.messages,
                flags=len(a.flags),
            )
        )
    return Report(
        negotiations=len(rooms),
        skipped=skipped,
        overall=overall.row("all", "all"),
        by_buyer_model=_rows("buyer_model", buyers),
        by_seller_model=_rows("seller_model", seller_models),
        by_seller_style=_rows("seller_style", styles),
        rooms=tuple(rooms),
    )
