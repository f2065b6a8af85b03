"""A scripted negotiator for the fake LLM servers: reads each request the way a model
would (from the prompt text alone) and answers with a plausible forced tool call.

    neg = Negotiator()
    fake.handler = neg                     # FakeAnthropic or FakeOpenAI, either wire format

Policy (stateless: everything comes from the prompt, so parallel requests need no
coordination and a rerun would ask the same questions):

- seller (`seller_reply`): first offers its asking price, then concedes half-way toward its
  floor each turn, never below it. Floor, cost and asking price come from its system prompt;
  its standing offer from the user message.
- buyer (`buyer_action`): messages all sellers first; then counters (half-way between its
  ideal price and the best standing offer) `counters` times; then accepts the best standing
  offer at its exact price and quantity if it is within its maximum (else counters again,
  or walks away on its final turn).

A correction or repair request (more than one message) is answered from the first user
message, the view, so a well-behaved model "fixes" its answer. Misbehaviour is scripted
with `rule(...)`: the first matching rule with uses left answers instead of the policy.

Every request is parsed into a `Turn` and kept in `turns` (the handler runs on the fake's
threads, so bookkeeping is under a lock).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

from mams.domain.money import cents, fmt
from tests.llm.fakes import (
    Reply,
    anthropic_text,
    anthropic_tool_use,
    openai_json_content,
    openai_text,
    openai_tool_call,
)

__all__ = [
    "BuyerPrompt",
    "Negotiator",
    "SellerPrompt",
    "Turn",
    "dollars",
]

BUYER = "buyer"
CORRECTION_PREFIX = "That action cannot be taken:"

_PRICE = r"\$([0-9][0-9,]*\.[0-9]{2})"


def dollars(raw: str) -> Decimal:
    """`"1,234.50"` (the digits of a `$` price) as a Decimal."""
    return Decimal(raw.replace(",", ""))


def _find(pattern: str, text: str, what: str) -> re.Match[str]:
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        raise ValueError(f"negotiator: no {what} in prompt: {text[:400]!r}")
    return m


@dataclass(frozen=True)
class BuyerPrompt:
    """What the buyer's prompts tell it."""

    quantity: int
    min_price: Decimal
    max_price: Decimal
    sellers: tuple[str, ...]
    offers: dict[str, Decimal]
    my_counters: tuple[Decimal, ...]
    round: int
    max_rounds: int
    final: bool

    @classmethod
    def parse(cls, system: str, user: str) -> BuyerPrompt:
        offers = {
            m.group(1): dollars(m.group(2))
            for m in re.finditer(r"^- (@[\w-]+): " + _PRICE + r" x \d+$", user, re.MULTILINE)
        }
        counters = tuple(
            dollars(m.group(1))
            for m in re.finditer(r"^\[round \d+\] You: .*\[price " + _PRICE + r"\]$", user, re.M)
        )
        turn = _find(r"It is your turn \(round (\d+) of (\d+)\)", user, "round")
        return cls(
            quantity=int(_find(r"You need (\d+) x ", system, "quantity").group(1)),
            min_price=dollars(_find(r"ideally " + _PRICE, system, "min price").group(1)),
            max_price=dollars(_find(r"never more than " + _PRICE, system, "max price").group(1)),
            sellers=tuple(
                h.strip()
                for h in _find(r"Sellers in this room: (.*?)\. ", system, "sellers")
                .group(1)
                .split(",")
            ),
            offers=offers,
            my_counters=counters,
            round=int(turn.group(1)),
            max_rounds=int(turn.group(2)),
            final="This is your FINAL turn" in user,
        )

    def best(self) -> tuple[str, Decimal] | None:
        """The cheapest standing offer (handle, unit price)."""
        if not self.offers:
            return None
        handle = min(self.offers, key=lambda h: (self.offers[h], h))
        return handle, self.offers[handle]


@dataclass(frozen=True)
class SellerPrompt:
    """What a seller's prompts tell it."""

    handle: str
    quantity: int
    asking: Decimal
    floor: Decimal
    cost: Decimal
    standing: Decimal | None
    buyer_counter: Decimal | None
    round: int

    @classmethod
    def parse(cls, system: str, user: str) -> SellerPrompt:
        standing = re.search(r"Your standing offer: " + _PRICE + " per unit", user)
        counters = re.findall(r"^\[round \d+\] @[\w-]+: .*\[price " + _PRICE + r"\]$", user, re.M)
        return cls(
            handle=_find(r"You are (@[\w-]+), a seller", system, "handle").group(1),
            quantity=int(_find(r"who wants (\d+) x ", system, "quantity").group(1)),
            asking=dollars(_find(r"Your asking price is " + _PRICE, system, "asking").group(1)),
            floor=dollars(_find(r"price\) is " + _PRICE, system, "floor").group(1)),
            cost=dollars(_find(r"your cost is " + _PRICE, system, "cost").group(1)),
            standing=dollars(standing.group(1)) if standing else None,
            buyer_counter=dollars(counters[-1]) if counters else None,
            round=int(_find(r"Reply to the buyer \(round (\d+)\)", user, "round").group(1)),
        )

    def next_price(self) -> Decimal:
        """Asking price first; then half-way from the standing offer toward the floor."""
        if self.standing is None:
            return self.asking
        return max(self.floor, cents((self.standing + self.floor) / 2))


@dataclass(frozen=True)
class Turn:
    """One request as the model sees it, plus builders for answers in its wire format."""

    flavour: Literal["anthropic", "openai"]
    json_mode: bool
    tool: str
    model: str
    system: str
    messages: tuple[tuple[str, str], ...]
    body: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Turn:
        tools = body.get("tools") or []
        if "system" in body or (tools and "input_schema" in tools[0]):
            raw_system = body.get("system") or ""
            system = (
                raw_system
                if isinstance(raw_system, str)
                else "".join(b.get("text", "") for b in raw_system)
            )
            msgs = tuple((m["role"], _content(m["content"])) for m in body["messages"])
            return cls("anthropic", False, tools[0]["name"], body["model"], system, msgs, body)
        all_msgs = [(m["role"], _content(m.get("content"))) for m in body["messages"]]
        system = "".join(c for r, c in all_msgs if r == "system")
        msgs = tuple((r, c) for r, c in all_msgs if r != "system")
        if tools:
            return cls(
                "openai", False, tools[0]["function"]["name"], body["model"], system, msgs, body
            )
        name = body["response_format"]["json_schema"]["name"]
        return cls("openai", True, name, body["model"], system, msgs, body)

    # -- what the request says ---------------------------------------------------------

    @property
    def view(self) -> str:
        """The first user message: the agent's view of the negotiation this turn."""
        return next(c for r, c in self.messages if r == "user")

    @property
    def correcting(self) -> bool:
        """A correction (bad output) or repair (guardrail) round."""
        return len(self.messages) > 1

    @property
    def correction(self) -> str:
        """The last user message when correcting, else ""."""
        return self.messages[-1][1] if self.correcting else ""

    @property
    def is_buyer(self) -> bool:
        return self.tool == "buyer_action"

    @property
    def agent(self) -> str:
        """ "buyer", or the seller's handle."""
        return BUYER if self.is_buyer else self.seller().handle

    @property
    def round(self) -> int:
        return self.buyer().round if self.is_buyer else self.seller().round

    def buyer(self) -> BuyerPrompt:
        return BuyerPrompt.parse(self.system, self.view)

    def seller(self) -> SellerPrompt:
        return SellerPrompt.parse(self.system, self.view)

    @property
    def text(self) -> str:
        """Everything the model was sent, as one string (for opacity checks)."""
        return json.dumps(self.body)

    # -- answers -----------------------------------------------------------------------

    def call(self, args: dict[str, Any]) -> Reply:
        """The forced tool call with `args`."""
        if self.flavour == "anthropic":
            return anthropic_tool_use(self.tool, args, model=self.model)
        if self.json_mode:
            return openai_json_content(args, model=self.model)
        return openai_tool_call(self.tool, args, model=self.model)

    def prose(self, text: str) -> Reply:
        """An answer without the tool call."""
        if self.flavour == "anthropic":
            return anthropic_text(text, model=self.model)
        return openai_text(text, model=self.model)

    def malformed(self, raw: str = '{"action": "accept", "unit_price": 12.5,') -> Reply:
        """A tool call whose arguments are not a JSON object."""
        if self.flavour == "openai":
            if self.json_mode:
                return openai_json_content(raw, model=self.model)
            return openai_tool_call(self.tool, raw, model=self.model)
        reply = anthropic_tool_use(self.tool, {}, model=self.model)
        assert isinstance(reply.body, dict)
        body = json.loads(json.dumps(reply.body))
        body["content"][-1]["input"] = raw  # a string where an object belongs
        return replace(reply, body=body)

    # -- the policy --------------------------------------------------------------------

    def seller_args(self, price: Decimal | None = None) -> dict[str, Any]:
        """The policy's seller reply (or one at `price`)."""
        s = self.seller()
        price = s.next_price() if price is None else price
        return {
            "reasoning": f"{s.handle} private: floor {fmt(s.floor)}, cost {fmt(s.cost)}",
            "text": f"{s.handle} says (round {s.round}): {fmt(price)} per unit, just for you.",
            "offer_unit_price": float(price),
        }

    def accept_args(
        self, handle: str, price: Decimal, quantity: int | None = None
    ) -> dict[str, Any]:
        b = self.buyer()
        return {
            "reasoning": f"buyer private: my max is {fmt(b.max_price)}",
            "action": "accept",
            "to": [],
            "text": f"Deal, {handle}: {fmt(price)} per unit.",
            "seller": handle,
            "unit_price": float(price),
            "quantity": b.quantity if quantity is None else quantity,
        }

    def buyer_args(self) -> dict[str, Any]:
        """The policy's buyer action."""
        b = self.buyer()
        private = f"buyer private: my max is {fmt(b.max_price)}"
        best = b.best()
        if best is not None and best[1] <= b.max_price and (b.final or b.my_counters):
            return self.accept_args(*best)
        if b.final:
            return {"reasoning": private, "action": "walk_away", "text": "No deal, thanks."}
        if best is None:
            return {
                "reasoning": private,
                "action": "message",
                "to": [],
                "text": f"Hello! I need {b.quantity} units. What is your best price?",
            }
        counter = min(b.max_price, cents(b.min_price + (best[1] - b.min_price) / 2))
        return {
            "reasoning": private,
            "action": "counter",
            "to": [],
            "text": f"Could you do {fmt(counter)} per unit?",
            "unit_price": float(counter),
        }

    def policy(self) -> Reply:
        """What a well-behaved model answers."""
        return self.call(self.buyer_args() if self.is_buyer else self.seller_args())


def _content(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        return "".join(b.get("text", "") for b in raw if isinstance(b, dict))
    return ""


@dataclass
class _Rule:
    when: Callable[[Turn], bool]
    answer: Callable[[Turn], Reply]
    left: int | None


class Negotiator:
    """A fake server `handler`: scripted misbehaviour first, else the policy."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()

    def rule(
        self,
        when: Callable[[Turn], bool],
        answer: Callable[[Turn], Reply],
        times: int | None = 1,
    ) -> None:
        """Answer requests matching `when` with `answer`, `times` times (None: always)."""
        with self._lock:
            self._rules.append(_Rule(when, answer, times))

    def __call__(self, body: dict[str, Any]) -> Reply:
        turn = Turn.parse(body)
        with self._lock:
            self.turns.append(turn)
            chosen = None
            for r in self._rules:
                if (r.left is None or r.left > 0) and r.when(turn):
                    if r.left is not None:
                        r.left -= 1
                    chosen = r
                    break
        if chosen is not None:
            return chosen.answer(turn)
        return turn.policy()

    def of(self, agent: str) -> list[Turn]:
        """The requests one agent ("buyer" or a seller handle) made, in arrival order."""
        with self._lock:
            return [t for t in self.turns if t.agent == agent]
