"""What a model is told, and how its answer becomes an action.

Prompts are built from the agent's own view alone, so a model can never be handed what
its agent may not see (docs/DESIGN.md invariant 1). The system prompt holds what is stable
for a negotiation (persona, private facts, rules) so providers can cache it; the user
message holds the conversation so far and the turn's instruction. The strategy the agent
plays adds its paragraph to the system prompt (`strategy_paragraph`; none for the
default), so the prompt, and its digest, differ by strategy. Answers come back as
one forced tool call, parsed strictly; anything unusable raises `OutputError` with a
reason the model can act on.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from mams.domain.config import agent_id_of
from mams.domain.errors import MamsError
from mams.domain.events import Offer
from mams.domain.messages import Accept, BuyerAction, Say, WalkAway
from mams.domain.money import fmt
from mams.domain.strategies import Side, prompt_paragraph, resolve
from mams.domain.views import BuyerView, Line, SellerView

STYLE_GUIDE = {
    "rude": "curt, impatient and a little rude (never abusive or offensive)",
    "neutral": "polite, concise and businesslike",
    "sweet": "warm, friendly and enthusiastic",
}

BUYER_TOOL_NAME = "buyer_action"
SELLER_TOOL_NAME = "seller_reply"

BUYER_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {
            "type": "string",
            "description": "Your private reasoning. Never shown to any seller.",
        },
        "action": {
            "type": "string",
            "enum": ["message", "counter", "accept", "walk_away"],
            "description": "message: write to sellers; counter: propose a unit price; "
            "accept: take one seller's standing offer; walk_away: leave",
        },
        "to": {
            "type": "array",
            "items": {"type": "string"},
            "description": 'Seller handles, e.g. ["@TechMart"]. Empty means all sellers.',
        },
        "text": {"type": "string", "description": "What you say to the seller(s)."},
        "unit_price": {
            "type": ["number", "null"],
            "description": "counter: your proposed unit price; accept: the exact "
            "unit price of the offer you accept",
        },
        "seller": {
            "type": ["string", "null"],
            "description": "accept: the handle of the seller whose offer you accept",
        },
        "quantity": {
            "type": ["integer", "null"],
            "description": "accept: the quantity (must be the quantity you need)",
        },
    },
    "required": ["reasoning", "action", "text"],
}

SELLER_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {
            "type": "string",
            "description": "Your private reasoning. Never shown to the buyer.",
        },
        "text": {"type": "string", "description": "Your reply to the buyer, in your style."},
        "offer_unit_price": {
            "type": ["number", "null"],
            "description": "Your committed unit price for the quantity the "
            "buyer asked for, or null to make no offer now.",
        },
    },
    "required": ["reasoning", "text", "offer_unit_price"],
}


class OutputError(MamsError):
    """A model's answer could not be turned into an action; `detail` says why."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


def strategy_paragraph(side: Side, label: str, prompt: str = "", base: str = "") -> str:
    """The system prompt's paragraph for the strategy an agent plays (as its room's terms
    name it): empty for the default."""
    return prompt_paragraph(resolve(side, label, prompt, base))


# -- buyer -----------------------------------------------------------------------------------
def buyer_system(view: BuyerView) -> str:
    """The buyer's stable instructions: its need, its private limits, the rules."""
    handles = ", ".join(p.handle for p in view.sellers)
    return (
        f"You are a buyer negotiating on a marketplace. You need {view.quantity} x "
        f"{view.item_name!r}.\n"
        f"Your private price range per unit: ideally {fmt(view.min_price)} or less; never "
        f"more than {fmt(view.max_price)}. Never reveal your maximum to anyone.\n"
        f"Sellers in this room: {handles}. Each seller sees only what you address to it; "
        "sellers cannot see each other.\n"
        f"The negotiation has at most {view.max_rounds} of your turns. On your final turn you "
        "can only accept a standing offer or walk away.\n"
        "Each turn, call the buyer_action tool exactly once:\n"
        "- message: write to some sellers (`to`: handles) or all (`to`: []);\n"
        "- counter: propose `unit_price` to the sellers in `to`;\n"
        "- accept: take `seller`'s standing offer at exactly its `unit_price` for exactly "
        f"{view.quantity} units;\n"
        "- walk_away: leave without a deal.\n"
        "Aim for the lowest price you can get; accept only an offer a seller actually made, "
        "at or below your maximum. Prices are in dollars with at most 2 decimals."
    ) + strategy_paragraph("buyer", view.strategy, view.strategy_prompt, view.strategy_base)


def _line(line: Line, me: str) -> str:
    price = f" [price {fmt(line.price)}]" if line.price is not None else ""
    who = me if line.speaker == "me" else line.speaker
    return f"[round {line.round}] {who}: {line.text}{price}"


def buyer_user(view: BuyerView) -> str:
    """The buyer's turn: the conversation so far and the offers standing now."""
    parts = ["Conversation so far:"]
    # Sellers answer in parallel, so arrival order is noise: within a round, show the
    # buyer's own words first, then sellers in room order. Same view, same prompt.
    order = {p.handle: i for i, p in enumerate(view.sellers)}
    history = sorted(
        view.history,
        key=lambda ln: (ln.round, -1 if ln.speaker == "me" else order.get(ln.speaker, len(order))),
    )
    parts += [_line(line, "You") for line in history] or ["(nothing yet)"]
    if view.offers:
        parts.append("\nStanding offers (per unit, for your quantity):")
        ids = {p.agent_id: i for i, p in enumerate(view.sellers)}
        for agent_id, offer in sorted(
            view.offers.items(), key=lambda kv: (kv[1].unit_price, ids.get(kv[0], 99))
        ):
            parts.append(f"- {view.handle(agent_id)}: {fmt(offer.unit_price)} x {offer.quantity}")
    if view.unanswered:
        silent = ", ".join(view.handle(a) for a in view.unanswered)
        parts.append(f"\nNo answer last round from: {silent}.")
    final = " This is your FINAL turn: accept a standing offer or walk away." if view.final else ""
    parts.append(
        f"\nIt is your turn (round {view.round} of {view.max_rounds}).{final} Call buyer_action."
    )
    return "\n".join(parts)


def _price(raw: object, field: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise OutputError(f"{field} must be a number like 12.50, got {raw!r}")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise OutputError(f"{field} must be a number like 12.50, got {raw!r}") from None
    if value.is_finite():
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -2:
            raise OutputError(f"{field} must have at most 2 decimal places, got {raw}")
    return value


def _seller_id(view: BuyerView, raw: object, field: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise OutputError(f"{field} must be a seller handle like @TechMart, got {raw!r}")
    try:
        return agent_id_of(raw.strip())
    except ValueError:
        handles = ", ".join(p.handle for p in view.sellers)
        raise OutputError(f"{field}: {raw!r} is not a seller handle; sellers: {handles}") from None


def parse_buyer(args: dict[str, Any] | None, view: BuyerView) -> tuple[BuyerAction, str]:
    """The buyer's tool call as an action and its reasoning; raises OutputError."""
    if args is None:
        raise OutputError(
            f"call the {BUYER_TOOL_NAME} tool with JSON arguments; prose alone is not an action"
        )
    reasoning = args.get("reasoning")
    text = args.get("text")
    action = args.get("action")
    if not isinstance(reasoning, str):
        reasoning = ""
    if not isinstance(text, str):
        raise OutputError("text must be a string")
    to_raw = args.get("to") or []
    if not isinstance(to_raw, list):
        raise OutputError("to must be a list of seller handles")
    to = tuple(_seller_id(view, h, "to[]") for h in to_raw)
    match action:
        case "message":
            return Say(text=text, to=to), reasoning
        case "counter":
            if args.get("unit_price") is None:
                raise OutputError("counter needs unit_price")
            return Say(
                text=text, to=to, counter_price=_price(args["unit_price"], "unit_price")
            ), reasoning
        case "accept":
            if args.get("unit_price") is None or args.get("seller") is None:
                raise OutputError("accept needs seller and unit_price (the offer's exact price)")
            qty = args.get("quantity")
            if qty is None:
                qty = view.quantity
            if isinstance(qty, bool) or not isinstance(qty, int):
                raise OutputError(f"quantity must be a whole number, got {qty!r}")
            return Accept(
                seller=_seller_id(view, args["seller"], "seller"),
                unit_price=_price(args["unit_price"], "unit_price"),
                quantity=qty,
                text=text,
            ), reasoning
        case "walk_away":
            return WalkAway(text=text), reasoning
        case _:
            raise OutputError(
                f"action must be one of message, counter, accept, walk_away; got {action!r}"
            )


# -- seller ----------------------------------------------------------------------------------
def seller_system(view: SellerView) -> str:
    """A seller's stable instructions: persona, private terms, the rules."""
    t = view.terms
    style = STYLE_GUIDE.get(t.style, STYLE_GUIDE["neutral"])
    return (
        f"You are {view.handle}, a seller on a marketplace, negotiating with the buyer "
        f"{view.buyer.handle} who wants {view.quantity} x {view.item_name!r}.\n"
        f"Your style: {style}.\n"
        f"Your priorities: customer retention {t.customer_retention_weight}, profit "
        f"{t.profit_maximization_weight} (weights summing to 1).\n"
        f"Your asking price is {fmt(t.selling_price)} per unit. Your private floor (least "
        f"acceptable price) is {fmt(t.least_price)} per unit and your cost is "
        f"{fmt(t.cost_price)} per unit. NEVER reveal your floor or your cost, and never offer "
        "below your floor.\n"
        "You cannot see other sellers or the buyer's budget.\n"
        "Each turn, call the seller_reply tool exactly once with your reply text and your "
        "committed unit price for the requested quantity (or null to make no offer). "
        "Prices are in dollars with at most 2 decimals."
    ) + strategy_paragraph("seller", t.strategy, t.strategy_prompt, t.strategy_base)


def seller_user(view: SellerView) -> str:
    """A seller's turn: the conversation so far with the buyer."""
    parts = ["Conversation so far:"]
    parts += [_line(line, "You") for line in view.history] or ["(nothing yet)"]
    if view.my_offer is not None:
        parts.append(f"\nYour standing offer: {fmt(view.my_offer.unit_price)} per unit.")
    parts.append(f"\nReply to the buyer (round {view.round}). Call seller_reply.")
    return "\n".join(parts)


def parse_seller(args: dict[str, Any] | None, view: SellerView) -> tuple[str, Offer | None, str]:
    """A seller's tool call as (text, offer, reasoning); raises OutputError."""
    if args is None:
        raise OutputError(
            f"call the {SELLER_TOOL_NAME} tool with JSON arguments; prose alone is not a reply"
        )
    text = args.get("text")
    if not isinstance(text, str) or not text.strip():
        raise OutputError("text must be a non-empty string")
    reasoning = args.get("reasoning")
    raw_price = args.get("offer_unit_price")
    offer = None
    if raw_price is not None:
        offer = Offer(unit_price=_price(raw_price, "offer_unit_price"), quantity=view.quantity)
    return text, offer, reasoning if isinstance(reasoning, str) else ""


def correction(problems: list[str]) -> str:
    """The message that asks a model, once, to fix its action."""
    listed = "\n".join(f"- {p}" for p in problems)
    return f"That action cannot be taken:\n{listed}\nCall the tool again with a corrected action."
