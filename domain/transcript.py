"""The transcript of a negotiation, rendered from its events alone.

The live view and `mams replay` both use this, so a replay shows exactly what the live
run showed. Entries are structured (for colour in the CLI) and have a plain text form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Literal

from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCalled,
    NegotiationEnded,
    NegotiationStarted,
    Outcome,
    ReasoningRecorded,
    RoundClosed,
    RoundOpened,
    SellerReplied,
)
from mams.domain.money import fmt

Kind = Literal["open", "round", "buyer", "seller", "deal", "walk", "end", "guardrail", "note"]


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One transcript line: who, to whom, what; `kind` drives styling."""

    kind: Kind
    round: int
    speaker: str
    audience: str
    text: str

    def plain(self) -> str:
        """The entry as one plain-text line."""
        head = f"[r{self.round}] " if self.round else ""
        if self.speaker and self.audience:
            return f"{head}{self.speaker} -> {self.audience}: {self.text}"
        if self.speaker:
            return f"{head}{self.speaker}: {self.text}"
        return f"{head}{self.text}"


class Renderer:
    """Turns events into entries one at a time (live) or all at once (replay)."""

    def __init__(self) -> None:
        self.handles: dict[str, str] = {}
        self.buyer = "Buyer"
        self.quantity = 0

    def name(self, agent_id: str) -> str:
        """A participant's handle for display."""
        return self.handles.get(agent_id, agent_id)

    def entries(self, event: Event) -> list[Entry]:
        """The transcript entries one event produces (private events: none)."""
        match event:
            case NegotiationStarted(item_name=item, buyer=b, sellers=sellers, max_rounds=mr):
                self.handles = {s.agent_id: s.handle for s in sellers}
                self.handles[b.agent_id] = b.handle
                self.buyer, self.quantity = b.handle, b.quantity
                names = ", ".join(s.handle for s in sellers)
                return [
                    Entry(
                        "open",
                        0,
                        "",
                        "",
                        f"Room opened: {b.quantity} x {item!r} with {names} (up to {mr} rounds)",
                    )
                ]
            case RoundOpened(round=n, final=final):
                return [Entry("round", n, "", "", "final turn" if final else "buyer's turn")]
            case BuyerSaid(round=n, to=to, text=text, counter_price=counter):
                everyone = set(to) == {k for k in self.handles if self.handles[k] != self.buyer}
                audience = "all" if everyone and len(to) > 1 else ", ".join(map(self.name, to))
                extra = f"  [counter {fmt(counter)}/unit]" if counter is not None else ""
                return [Entry("buyer", n, self.buyer, audience, text + extra)]
            case SellerReplied(round=n, seller=s, text=text, offer=offer):
                extra = (
                    f"  [offer {fmt(offer.unit_price)} x {offer.quantity}]"
                    if offer is not None
                    else ""
                )
                return [Entry("seller", n, self.name(s), self.buyer, text + extra)]
            case RoundClosed(round=n, reason="deadline", unanswered=silent):
                return [
                    Entry(
                        "note",
                        n,
                        "",
                        "",
                        f"round deadline passed; no answer from "
                        f"{', '.join(map(self.name, silent))}",
                    )
                ]
            case RoundClosed(round=n, reason="buyer_timeout"):
                return [Entry("note", n, "", "", "buyer did not act before the deadline")]
            case DealClosed(round=n, seller=s, unit_price=p, quantity=q, text=text):
                said = f"{text}  " if text else ""
                return [
                    Entry(
                        "deal",
                        n,
                        self.buyer,
                        self.name(s),
                        f"{said}[accepts {fmt(p)} x {q} = {fmt(p * q)}]",
                    )
                ]
            case BuyerWalkedAway(round=n, text=text):
                return [Entry("walk", n, self.buyer, "all", f"{text}  [walks away]".strip())]
            case GuardrailTripped(round=n, agent=a, rule=rule, detail=detail, resolution=res):
                return [
                    Entry(
                        "guardrail",
                        n,
                        "",
                        "",
                        f"guardrail {rule} ({self.name(a)}, {res}): {detail}",
                    )
                ]
            case NegotiationEnded(status=status, outcome=outcome, reason=reason):
                return [
                    Entry(
                        "end",
                        outcome.rounds,
                        "",
                        "",
                        f"{describe_outcome(outcome, self.name)}"
                        f"{' (aborted: ' + reason + ')' if status == 'aborted' else ''}",
                    )
                ]
            case RoundClosed() | ReasoningRecorded() | LLMCalled():
                return []


def _same(agent_id: str) -> str:
    return agent_id


def describe_outcome(outcome: Outcome, name: Callable[[str], str] = _same) -> str:
    """One sentence for an outcome; `name` turns a seller id into its display name."""
    display = name
    match outcome.type:
        case "deal":
            assert outcome.unit_price is not None
            assert outcome.seller is not None
            return (
                f"DEAL with {display(outcome.seller)} at {fmt(outcome.unit_price)} x "
                f"{outcome.quantity} after {outcome.rounds} round(s)"
            )
        case "no_deal":
            return f"NO DEAL after {outcome.rounds} round(s)"
        case "max_rounds":
            return f"ROUND LIMIT reached after {outcome.rounds} round(s), no deal"


def render(events: Iterable[Event]) -> list[Entry]:
    """The whole transcript of a stream of events."""
    renderer = Renderer()
    return [entry for event in events for entry in renderer.entries(event)]
