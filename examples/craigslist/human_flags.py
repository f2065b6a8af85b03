#!/usr/bin/env python3
"""Grade real people with the grounded quality checks: humans as the control group.

Converts the 188 CraigslistBargain dialogues beside this script (`dialogues-valid.jsonl`)
into negotiation logs (`mams.domain.craigslist`), runs `mams.domain.quality.check` over
each, and prints flag rates: flags per 100 messages by kind, by rule and by side, the
share of dialogues with at least one flag, and the deal rate and prices for context.

    python examples/craigslist/human_flags.py            # rich tables
    python examples/craigslist/human_flags.py --json     # one JSON object on stdout
    python examples/craigslist/human_flags.py --store    # also import the logs into the
                                                         # database (DATABASE_URL)

A message is a text a person wrote (empty texts the conversion adds are not counted).
README.md beside this script says how the dialogues become logs and what each check
means for people.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, cast, get_args
from uuid import uuid5

import structlog
from rich.console import Console
from rich.table import Table

from mams.domain.config import (
    BuyerConfig,
    BuyerItem,
    InventoryItem,
    Scenario,
    SellerConfig,
    Style,
)
from mams.domain.craigslist import (
    BUYER,
    BUYER_HANDLE,
    HUMAN,
    SELLER,
    SELLER_HANDLE,
    SESSION_ID,
    dialogues_to_events,
    parse_dialogue,
)
from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    FlagKind,
    NegotiationEnded,
    NegotiationStarted,
    QualityFlagged,
    SellerReplied,
    encode_event,
    event_type,
)
from mams.domain.quality import check, prices_in, sentences
from mams.storage.model import NewEvent

HERE = Path(__file__).resolve().parent
DIALOGUES = HERE / "dialogues-valid.jsonl"
KINDS: tuple[str, ...] = get_args(FlagKind)
# A seller sentence naming what it paid, with an amount: a human cost disclosure the log
# cannot grade (it has no cost), counted beside the flags.
_PAID = re.compile(
    r"\b(?:paid|bought|purchased|cost (?:me|us)|got (?:it|this|them|the \w+) for)\b", re.I
)


def _messages(events: Sequence[Event]) -> tuple[int, int]:
    """Texts the buyer and the seller wrote (non-empty)."""
    buyer = seller = 0
    for e in events:
        match e:
            case BuyerSaid() | DealClosed() | BuyerWalkedAway() if e.text.strip():
                buyer += 1
            case SellerReplied() if e.text.strip():
                seller += 1
            case _:
                pass
    return buyer, seller


def _cost_disclosures(events: Sequence[Event]) -> list[str]:
    return [
        s
        for e in events
        if isinstance(e, SellerReplied)
        for s in sentences(e.text)
        if _PAID.search(s) and prices_in(s)
    ]


def _rate(count: int, messages: int) -> float | None:
    return round(100 * count / messages, 2) if messages else None


def summarize(
    logs: Sequence[Sequence[Event]],
    flags: Sequence[Sequence[QualityFlagged]],
    targets: Sequence[Decimal],
) -> dict[str, Any]:
    """Flag rates and context figures over converted logs, the flags `check` found in each
    and each dialogue's target price (`flags[i]` and `targets[i]` belong to `logs[i]`)."""
    buyer_msgs = seller_msgs = empty = counters = offers = 0
    deals: list[tuple[Decimal, Decimal, Decimal]] = []  # (price, listing, target)
    disclosures: list[dict[str, Any]] = []
    for i, (events, target) in enumerate(zip(logs, targets, strict=True)):
        b, s = _messages(events)
        buyer_msgs, seller_msgs = buyer_msgs + b, seller_msgs + s
        empty += b + s == 0
        counters += sum(1 for e in events if isinstance(e, BuyerSaid) and e.counter_price)
        offers += sum(1 for e in events if isinstance(e, SellerReplied) and e.offer)
        started = next(e for e in events if isinstance(e, NegotiationStarted))
        outcome = next(e for e in events if isinstance(e, NegotiationEnded)).outcome
        if outcome.type == "deal" and outcome.unit_price is not None:
            deals.append((outcome.unit_price, started.sellers[0].selling_price, target))
        disclosures += [{"dialogue": i, "text": t} for t in _cost_disclosures(events)]
    messages = buyer_msgs + seller_msgs
    every = [(i, f) for i, found in enumerate(flags) for f in found]

    def row(chosen: list[tuple[int, QualityFlagged]], per: int) -> dict[str, Any]:
        return {
            "flags": len(chosen),
            "per_100": _rate(len(chosen), per),
            "dialogues": len({i for i, _ in chosen}),
        }

    by_rule = {}
    for rule in sorted({f.rule for _, f in every}):
        chosen = [(i, f) for i, f in every if f.rule == rule]
        by_rule[rule] = {"kind": chosen[0][1].kind, **row(chosen, messages)}
    sides = {"buyer": (BUYER, buyer_msgs), "seller": (SELLER, seller_msgs)}
    return {
        "source": "CraigslistBargain validation dialogues (examples/craigslist/README.md)",
        "dialogues": len(logs),
        "empty_dialogues": empty,
        "messages": messages,
        "buyer_messages": buyer_msgs,
        "seller_messages": seller_msgs,
        "buyer_counters": counters,
        "seller_offers": offers,
        "deals": len(deals),
        "deal_rate": _share(len(deals), len(logs)),
        "deal_rate_nonempty": _share(len(deals), len(logs) - empty),
        "mean_deal_over_listing": _mean([p / listing for p, listing, _ in deals]),
        "mean_deal_over_target": _mean([p / target for p, _, target in deals]),
        "flags": len(every),
        "flags_per_100": _rate(len(every), messages),
        "dialogues_flagged": len({i for i, _ in every}),
        "share_flagged": _share(len({i for i, _ in every}), len(logs)),
        "share_flagged_nonempty": _share(len({i for i, _ in every}), len(logs) - empty),
        "by_kind": {k: row([(i, f) for i, f in every if f.kind == k], messages) for k in KINDS},
        "by_rule": by_rule,
        "by_side": {
            name: {"messages": n, **row([(i, f) for i, f in every if f.agent == agent], n)}
            for name, (agent, n) in sides.items()
        },
        "cost_disclosures": len(disclosures),
        "cost_disclosure_examples": disclosures[:5],
        "findings": [
            {
                "dialogue": i,
                "negotiation_id": str(f.negotiation_id),
                "kind": f.kind,
                "rule": f.rule,
                "severity": f.severity,
                "agent": f.agent,
                "round": f.round,
                "detail": f.detail,
            }
            for i, f in every
        ],
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _mean(values: Sequence[Decimal]) -> float | None:
    return round(float(sum(values) / len(values)), 4) if values else None


def load(path: Path) -> tuple[list[list[Event]], list[list[QualityFlagged]], list[Decimal]]:
    """The converted logs of a dialogues file, each log's flags and each target price."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    logs = dialogues_to_events(lines)
    targets = [parse_dialogue(line).buyer_price for line in lines]
    return logs, [check(events) for events in logs], targets


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(out: Console, s: dict[str, Any]) -> None:
    """The summary as rich tables."""
    head = Table(title="Humans as the control group: CraigslistBargain validation dialogues")
    head.add_column("figure")
    head.add_column("value", justify="right")
    for name, value in (
        ("dialogues (empty)", f"{s['dialogues']} ({s['empty_dialogues']})"),
        ("messages (buyer / seller)", f"{s['messages']} ({s['buyer_messages']} / "
         f"{s['seller_messages']})"),
        ("structured prices read (counters / offers)", f"{s['buyer_counters']} / "
         f"{s['seller_offers']}"),
        ("deals inferred", f"{s['deals']} ({_pct(s['deal_rate'])}; "
         f"{_pct(s['deal_rate_nonempty'])} of non-empty)"),
        ("mean deal / listing price", _num(s["mean_deal_over_listing"])),
        ("mean deal / buyer target", _num(s["mean_deal_over_target"])),
        ("flags (per 100 messages)", f"{s['flags']} ({_num(s['flags_per_100'])})"),
        ("dialogues with a flag", f"{s['dialogues_flagged']} ({_pct(s['share_flagged'])}; "
         f"{_pct(s['share_flagged_nonempty'])} of non-empty)"),
        ("seller sentences naming what it paid", str(s["cost_disclosures"])),
    ):  # fmt: skip
        head.add_row(name, value)
    out.print(head)
    kinds = Table(title="By kind")
    rules = Table(title="By rule")
    sides = Table(title="By side (per 100 of that side's messages)")
    for t, first in ((kinds, "kind"), (rules, "rule"), (sides, "side")):
        t.add_column(first)
        for col in ("flags", "per 100 msgs", "dialogues"):
            t.add_column(col, justify="right")
    for name, r in s["by_kind"].items():
        kinds.add_row(name, str(r["flags"]), _num(r["per_100"]), str(r["dialogues"]))
    for name, r in s["by_rule"].items():
        rules.add_row(name, str(r["flags"]), _num(r["per_100"]), str(r["dialogues"]))
    for name, r in s["by_side"].items():
        sides.add_row(f"{name} ({r['messages']} msgs)", str(r["flags"]), _num(r["per_100"]),
                      str(r["dialogues"]))  # fmt: skip
    out.print(kinds)
    out.print(rules)
    out.print(sides)
    for f in s["findings"]:
        out.print(f"[dim]#{f['dialogue']} {f['rule']} ({f['severity']}):[/dim] {f['detail']}",
                  markup=True, highlight=False, soft_wrap=True)  # fmt: skip


async def store(logs: Sequence[Sequence[Event]], dsn: str) -> int:
    """Import the logs into the database at `dsn` (one session); returns events written.
    Idempotent: events are keyed by uuid5 ids, and the session is stored once."""
    from mams.storage.pg import open_store
    from mams.storage.readmodels import ReadModelProjector, save_session

    pool, event_store = await open_store(dsn, projector=ReadModelProjector())
    try:
        async with pool.acquire() as conn:
            known = "SELECT 1 FROM sessions WHERE session_id = $1"
            if not await conn.fetchval(known, SESSION_ID):
                await save_session(conn, SESSION_ID, scenario_of(logs))
        written = 0
        for events in logs:
            nid = events[0].negotiation_id if isinstance(events[0], NegotiationStarted) else None
            assert nid is not None
            if await event_store.last_seq(nid) == len(events):
                continue
            await event_store.append(
                [
                    NewEvent(nid, n, uuid5(nid, f"seq:{n}"), event_type(e), encode_event(e))
                    for n, e in enumerate(events, 1)
                ]
            )
            written += len(events)
        return written
    finally:
        await pool.close()


def scenario_of(logs: Sequence[Sequence[Event]]) -> Scenario:
    """The session record of the converted logs: one buyer item and one seller stock entry
    per dialogue. Its seller style is `human`, which no scenario file may use, so the
    session is for the record and `mams report`, not for `mams run --session`."""
    starts = [e for events in logs for e in events if isinstance(e, NegotiationStarted)]
    items = tuple(
        BuyerItem(
            item_name=s.item_name,
            quantity=s.buyer.quantity,
            min_price=s.buyer.min_price,
            max_price=s.buyer.max_price,
        )
        for s in starts
    )
    stock = tuple(
        InventoryItem(
            item_name=s.item_name,
            cost_price=s.sellers[0].cost_price,
            selling_price=s.sellers[0].selling_price,
            least_price=s.sellers[0].least_price,
        )
        for s in starts
    )
    seller = SellerConfig(
        handle=SELLER_HANDLE,
        style=cast(Style, HUMAN),
        customer_retention_weight=Decimal("0.5"),
        profit_maximization_weight=Decimal("0.5"),
        inventory=stock,
        model=HUMAN,
    )
    return Scenario(
        name="CraigslistBargain humans (validation dialogues)",
        buyer=BuyerConfig(items=items, handle=BUYER_HANDLE, model=HUMAN),
        sellers=(seller,),
        description="188 real human negotiations converted by mams.domain.craigslist",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Convert, check, print (or emit JSON); with --store, also import into the database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--store", action="store_true", help="import the logs (DATABASE_URL)")
    parser.add_argument("--file", type=Path, default=DIALOGUES, help="the dialogues file")
    args = parser.parse_args(argv)
    # Logs (the storage's migration notes) go to stderr: stdout is the JSON object.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    logs, flags, targets = load(args.file)
    summary = summarize(logs, flags, targets)
    err = Console(stderr=True)
    if args.store:
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            err.print("--store needs DATABASE_URL (e.g. postgresql://postgres@127.0.0.1/mams)")
            return 2
        written = asyncio.run(store(logs, dsn))
        err.print(f"stored session {SESSION_ID}: {written} events written "
                  f"(`mams report --session {SESSION_ID}`)")  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        render(Console(), summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
