"""What the HTTP API reads and writes: the specification's JSON shapes as msgspec types
(the OpenAPI document is generated from these same types), and the reading of a request
body into one of them that lists every problem with its JSON path.

Parts of a scenario (the buyer's items, a seller) are validated by the scenario files' own
validator (`domain.config.parse_buyer`, `parse_seller`): the same rules, the same
messages. Everything else is checked field by field, so a body with three mistakes gets
three problems back, not the first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import msgspec

from mams.domain.bounds import MAX_TEXT, BoundsError, check_nesting
from mams.domain.config import Problem

T = TypeVar("T")

MAX_BODY = 1024 * 1024  # bytes a request body may have (a scenario fits in far less)
MAX_BODY_DEPTH = 8
MAX_BODY_VALUES = 50_000

_decoder = msgspec.json.Decoder(float_hook=Decimal)  # prices stay exact


class BodyError(Exception):
    """A request body that cannot be used: every problem, each with its JSON path."""

    def __init__(self, problems: list[Problem], message: str = "the request body is not valid"):
        self.problems = problems
        self.message = message
        super().__init__(f"{message}: " + "; ".join(str(p) for p in problems))


def decode_json(body: bytes) -> object:
    """The JSON document of a body (decimals exact); BodyError if it is not JSON, too big
    or nested too deep."""
    if len(body) > MAX_BODY:
        raise BodyError([Problem("$", f"is {len(body)} bytes; at most {MAX_BODY}")])
    if not body.strip():
        raise BodyError([Problem("$", "is empty; send a JSON object")])
    try:
        raw = _decoder.decode(body)
    except RecursionError:
        raise BodyError([Problem("$", "is nested too deeply")]) from None
    except msgspec.DecodeError as exc:
        raise BodyError([Problem("$", f"is not JSON: {exc}")]) from None
    try:
        check_nesting(raw, "$", depth=MAX_BODY_DEPTH, values=MAX_BODY_VALUES)
    except BoundsError as exc:
        raise BodyError([Problem("$", exc.reason)]) from None
    return raw


_AT = re.compile(r" - at `\$(.*)`$")


def _problem(path: str, exc: msgspec.ValidationError) -> Problem:
    text = str(exc)
    where = _AT.search(text)
    if where is not None:
        text = text[: where.start()]
        path += where.group(1)
    return Problem(path, text)


def read(raw: object, kind: type[T]) -> T:
    """`raw` (a decoded JSON body) as a `kind` struct; BodyError listing every field that
    is unknown, missing or of the wrong type or value."""
    if not isinstance(raw, Mapping):
        raise BodyError([Problem("$", f"must be a JSON object, got {type(raw).__name__}")])
    fields = msgspec.structs.fields(kind)  # type: ignore[arg-type]
    names = [f.encode_name for f in fields]
    problems = [
        Problem(str(key), f"unknown field; allowed: {', '.join(names)}")
        for key in raw
        if key not in names
    ]
    for f in fields:
        if f.encode_name not in raw:
            if f.required:
                problems.append(Problem(f.encode_name, "is required"))
            continue
        try:
            msgspec.convert(raw[f.encode_name], f.type)
        except msgspec.ValidationError as exc:
            problems.append(_problem(f.encode_name, exc))
    if problems:
        raise BodyError(problems)
    try:
        value: T = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:  # a rule across fields (__post_init__)
        raise BodyError([_problem("", exc)]) from None
    return value


# What a person says in a turn: as long as an agent may say (domain.bounds.MAX_TEXT).
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


# -- sessions -----------------------------------------------------------------------------
class NewSession(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/sessions`: a session to assemble (`description`), or one whole
    (`scenario`, a scenario file's mapping)."""

    description: str = ""
    scenario: dict[str, Any] | None = None


class SessionCreated(msgspec.Struct, frozen=True, kw_only=True):
    session_id: UUID
    created_at: datetime


class Priorities(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A seller's weights; they sum to 1."""

    customer_retention: Decimal
    profit_maximization: Decimal


class InventoryEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    item_name: str
    cost_price: Decimal
    selling_price: Decimal
    least_price: Decimal


class NewSeller(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/sessions/{id}/sellers`: one seller, its private terms per item."""

    handle: str
    style: Literal["rude", "neutral", "sweet"]
    priorities: Priorities
    inventory: list[InventoryEntry]
    model: str | None = None
    voice: str | None = None  # a voice name (domain.voices); default: from style and handle


class NeedEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    item_name: str
    quantity: int
    min_price: Decimal
    max_price: Decimal


class BuyerConfigBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/sessions/{id}/buyer-config`: what the buyer needs (replaces any earlier)."""

    items: list[NeedEntry]
    handle: str | None = None
    model: str | None = None


def seller_raw(raw: object) -> tuple[dict[str, Any], list[Problem]]:
    """A `NewSeller` body as a scenario's `[[sellers]]` entry (its weights renamed), for
    `domain.config.parse_seller`, and the problems of the renaming (`priorities` missing
    or not an object, fields the body may not have), to report with the validator's.
    BodyError if the body is not an object."""
    if not isinstance(raw, Mapping):
        raise BodyError([Problem("$", f"must be a JSON object, got {type(raw).__name__}")])
    allowed = [f.encode_name for f in msgspec.structs.fields(NewSeller)]
    problems = [
        Problem(str(k), f"unknown field; allowed: {', '.join(allowed)}")
        for k in raw
        if k not in allowed
    ]
    entry = {k: v for k, v in raw.items() if k != "priorities"}
    priorities = raw.get("priorities")
    if priorities is None:
        problems.append(Problem("priorities", "is required"))
    elif not isinstance(priorities, Mapping):
        problems.append(Problem("priorities", "must be an object"))
    else:
        weights = ("customer_retention", "profit_maximization")
        for k in priorities:
            if k not in weights:
                problems.append(Problem(f"priorities.{k}", f"unknown field; allowed: {weights}"))
        for k in weights:
            if k in priorities:
                entry[f"{k}_weight"] = priorities[k]
            else:
                problems.append(Problem(f"priorities.{k}", "is required"))
    return entry, problems


def seller_path(path: str) -> str:
    """A scenario seller's problem path as the `NewSeller` body spells it."""
    for weight in ("customer_retention", "profit_maximization"):
        if path == f"{weight}_weight":
            return f"priorities.{weight}"
    return path


class SellerAdded(msgspec.Struct, frozen=True, kw_only=True):
    seller_id: str
    handle: str


# -- negotiations -------------------------------------------------------------------------
class StartBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/negotiations/start`: open a session's room for an item (every item if
    none is named), the buyer an agent (LLM or baseline) or the caller (`"human"`)."""

    session_id: UUID
    item_name: str | None = None
    buyer: Literal["agent", "human"] = "agent"
    runs: int = 1
    seed: int | None = None
    max_rounds: int | None = None
    round_timeout: float | None = None
    rooms_at_once: int | None = None
    buyer_model: str | None = None
    seller_model: str | None = None
    monitor: bool = True


class Started(msgspec.Struct, frozen=True, kw_only=True):
    negotiation_id: UUID
    negotiation_ids: list[UUID]
    status: Literal["in_progress"]
    available_sellers: list[str]
    buyer: Literal["agent", "human"]


class MessageBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/negotiations/{id}/message`: the person's turn as the buyer."""

    text: Text = msgspec.field(default="")
    sender: Literal["buyer"] = "buyer"
    recipients: list[str] = msgspec.field(default_factory=lambda: ["all"])
    counter_price: Decimal | None = None


class OfferOut(msgspec.Struct, frozen=True, kw_only=True):
    unit_price: Decimal
    quantity: int


class SellerResponse(msgspec.Struct, frozen=True, kw_only=True):
    seller_id: str
    handle: str
    response: str
    offer: OfferOut | None
    message_id: UUID | None = None  # the reply's id (its SSE event and its audio name it)
    audio_url: str | None = None
    quality: list[str] = msgspec.field(default_factory=list)


class MessageAnswered(msgspec.Struct, frozen=True, kw_only=True):
    message_id: UUID | None
    round: int
    seller_responses: list[SellerResponse]
    unanswered: list[str]
    status: Literal["in_progress", "ended"]
    outcome: dict[str, Any] | None = None


class DecideBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/negotiations/{id}/decide`: accept a standing offer, or walk away."""

    decision: Literal["accept", "walk_away"]
    seller_id: str | None = None
    price: Decimal | None = None
    quantity: int | None = None
    text: Text = ""

    def __post_init__(self) -> None:
        if self.decision == "accept":
            missing = [n for n in ("seller_id", "price", "quantity") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"accept needs {', '.join(missing)}")


class DealSummary(msgspec.Struct, frozen=True, kw_only=True):
    seller: str
    final_price: Decimal
    quantity: int
    reasoning: str


class Decided(msgspec.Struct, frozen=True, kw_only=True):
    outcome_id: UUID
    status: str
    outcome: dict[str, Any]
    deal_summary: DealSummary | None
    analysis: dict[str, Any]


class ProblemOut(msgspec.Struct, frozen=True):
    path: str
    message: str


class ErrorOut(msgspec.Struct, frozen=True, kw_only=True):
    """Every error response: what is wrong and what to do, and for a bad body each
    problem with its JSON path."""

    error: str
    problems: list[ProblemOut] = msgspec.field(default_factory=list)
