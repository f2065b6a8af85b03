"""What one market accepts from the outside: the bounds every value entering through the
bus (or a file, or later an HTTP body) is checked against at the boundary.

They follow from two things: what the database can hold (money is numeric(12,2), rounds
and quantities are int4, seeds int8) and what one participant may cost a market (rounds,
deadlines, rooms per request). The broker, the CLI and the scenario parser all read them
from here, so one limit is stated once.

Two tiers, because a refusal is answered differently:

- `check_outbox` (called by `domain.messages.decode_outbox`, so by the broker on every
  message from an agent): anything that could crash a process, fail a database write or
  corrupt what is stored, plus every bound of a turn and of a hello. A message that breaks
  one is dropped with a logged reason, as malformed JSON is. A price the decision core
  overrides anyway (NaN, not positive, absurdly large: a guardrail trip in the log) is
  left to it.
- the market's policy for an `open_rooms` request (round limit, deadline, seeds, rooms
  per request), which the buyer should hear about: the broker answers a request that
  breaks it with `Rejected` (actors/broker.py), using the limits stated here.

Agents keep their own turns inside the bounds with `fit_turn` and `fit_label`, so an honest
turn is never dropped for a long model response or an odd model name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

import msgspec

from mams.domain.errors import MamsError
from mams.domain.events import LLMCall, Offer

if TYPE_CHECKING:  # messages imports this module; the types are only named here
    from mams.domain.messages import (
        BuyerTurn,
        CommittedEvent,
        GuardrailNote,
        Hello,
        OpenRooms,
        OutboxMessage,
        SellerTurn,
    )

# -- what the schema can hold ---------------------------------------------------------------
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
# numeric(12,2): ten digits before the point. A price must also leave room for a total
# (numeric(14,2)) of price x quantity, so quantities are bounded below too.
MAX_PRICE = Decimal("99999999.99")
MAX_QUANTITY = 1_000_000
# numeric(14,2) (outcomes.total): price x quantity must stay below 10^12, which
# MAX_PRICE x MAX_QUANTITY (~10^14) does not, so a scenario bounds max_price x quantity
# (what a deal can cost) and asking price x quantity on their own.
MAX_TOTAL = Decimal("999999999999.99")
# The decision core overrides (and logs as a guardrail trip) a price from an agent that is
# not finite, not above 0, or at least this (domain.guardrails.PRICE_LIMIT): such a price
# is let through the boundary for it to do so. Every other price must be storable.
GUARDRAIL_PRICE_LIMIT = Decimal("10000000000")

# -- what one participant may cost a market -------------------------------------------------
MAX_ROUNDS_LIMIT = 100  # max_rounds of a room: from 2 to this
ROUND_TIMEOUT_MIN = 0.1  # seconds: a round's deadline is at least this ...
ROUND_TIMEOUT_MAX = 86_400.0  # ... and at most a day (a person may play the buyer)
MAX_ROOMS_PER_REQUEST = 10_000  # runs x items of one open_rooms
MAX_SEED = 2**62  # seed + run index must stay inside bigint

# The range of each room option, whoever sets it (an agent's open_rooms, `mams run`'s flags).
ROOM_OPTION_RANGES: dict[str, tuple[int | float, int | float]] = {
    "max_rounds": (2, MAX_ROUNDS_LIMIT),
    "round_timeout": (ROUND_TIMEOUT_MIN, ROUND_TIMEOUT_MAX),
    "runs": (1, MAX_ROOMS_PER_REQUEST),
    "seed": (-MAX_SEED, MAX_SEED),
}


def room_option_problem(name: str, value: float) -> str | None:
    """None if room option `name` (a key of ROOM_OPTION_RANGES) may be `value`, else
    what it must be (`"must be from 2 to 100"`). NaN is never in range."""
    low, high = ROOM_OPTION_RANGES[name]
    if low <= value <= high:
        return None
    unit = " seconds" if name == "round_timeout" else ""
    return f"must be from {_number(low)} to {_number(high)}{unit}"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- sizes of what an agent sends -----------------------------------------------------------
# NATS's default max_payload is 1 MiB; the broker drops anything larger before decoding.
MAX_PAYLOAD = 1000 * 1024
# The string and list bounds below are in characters and are chosen so that a turn at every
# limit at once, in plain text, fits MAX_PAYLOAD: text + reasoning (2 x 4,000) + 16 notes
# (16 x 8,100) + model bodies (800,000 all told) is ~938,000, leaving room for field names,
# ids and numbers. Beyond that the byte size (escapes, non-ASCII) is MAX_PAYLOAD's to stop.
MAX_TEXT = 4000  # what one agent says, its reasoning, a guardrail note's detail/attempted
MAX_NAME = 200  # an item name (as scenarios allow)
MAX_AGENT_ID = 64  # an agent id in `to`, `seller` (handles are 1-32; ids fit a subject)
MAX_RULE = 80  # a guardrail's rule name, its resolution
MAX_GUARDRAILS = 16  # notes on one turn (decide, repair and fallback make a few)
MAX_LLM_CALLS = 8  # model calls behind one turn (decide and one repair, with headroom)
MAX_LLM_BODY = 200_000  # one request/response/tool_input/text/error of a call
MAX_LLM_BODIES = 800_000  # all those bodies of one turn together
MAX_LABEL = 100  # a brain label (Hello.brain), a call's provider/model/purpose
MAX_DIGEST = 128  # a call's prompt_digest (a hex digest)
MAX_TOKENS = 100_000_000  # tokens of one call (context windows are ~10^6)
MAX_RETRIES = 1_000
MAX_LATENCY_MS = 86_400_000.0  # a day
MAX_COST_USD = 100_000.0  # one call; an estimate
MAX_PROTOCOL = 1_000

# -- scenarios (files, and open_rooms.scenario) ---------------------------------------------
MAX_SELLERS_PER_ITEM = 10  # sellers negotiating one item (and a buyer's `to`)
MAX_SCENARIO_SELLERS = 1_000
MAX_SCENARIO_ITEMS = MAX_ROOMS_PER_REQUEST  # buyer items, and items of one seller
MAX_DESCRIPTION = 10_000
# A scenario nests 5 deep (sellers[i].inventory[j].field); deeper is never a scenario.
MAX_SCENARIO_DEPTH = 8
MAX_SCENARIO_VALUES = 1_000_000  # values in one scenario, all levels together
MAX_SCENARIO_BYTES = 16 * 1024 * 1024  # a scenario file

# A label (brain, model, provider) names what an agent runs; reports group by it, so it is
# plain: letters, digits, space and . _ : / @ + ( ) ~ - (no control characters, no markup).
_LABEL = re.compile(r"[A-Za-z0-9 ._:/@+()~-]*")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9 ._:/@+()~-]")


class BoundsError(MamsError, ValueError):
    """A value outside what the market accepts: `path` names the field (as in
    `seller.turn.offer.unit_price`), `reason` what is wrong and the limit."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


# -- single values ---------------------------------------------------------------------------
def price_problem(value: Decimal) -> str | None:
    """Why `value` cannot be a price (a unit price, a counter), or None if it can: finite,
    at most 2 decimals, above 0 and at most MAX_PRICE (it then fits numeric(12,2))."""
    if not value.is_finite():  # before any comparison: sNaN raises on one
        return f"{value} is not a finite number"
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    problems = []
    if exponent < -2:
        problems.append("has more than 2 decimals")
    if value > MAX_PRICE:
        problems.append(f"exceeds {MAX_PRICE}")
    elif value <= 0:
        problems.append("must be greater than 0")
    if problems:
        return f"{_short(value)} {' / '.join(problems)}"
    return None


def check_price(value: Decimal, path: str) -> None:
    """Raise BoundsError unless `value` is a price (see `price_problem`)."""
    if (why := price_problem(value)) is not None:
        raise BoundsError(path, why)


def _check_wire_price(value: Decimal, path: str) -> None:
    # Only a price the core would take as one must be storable: a NaN, a negative or a
    # 31-digit price is the core's to override, recording the misstep (see
    # GUARDRAIL_PRICE_LIMIT); a 9999999999.999 it would take, and the database could not.
    if value.is_finite() and 0 < value < GUARDRAIL_PRICE_LIMIT:
        check_price(value, path)


def check_int(value: int, path: str, low: int, high: int) -> None:
    """Raise BoundsError unless `low <= value <= high`."""
    if not low <= value <= high:
        raise BoundsError(path, f"{_short(value)} is outside {low}..{high}")


def check_float(value: float, path: str, low: float, high: float) -> None:
    """Raise BoundsError unless `value` is finite and `low <= value <= high`."""
    if not math.isfinite(value) or not low <= value <= high:
        raise BoundsError(path, f"{value!r} is outside {low:g}..{high:g}")


def check_text(value: str, path: str, limit: int) -> None:
    """Raise BoundsError if `value` is longer than `limit` characters or holds a NUL
    (PostgreSQL's text and jsonb refuse NUL)."""
    if len(value) > limit:
        raise BoundsError(path, f"{len(value)} characters exceed {limit}")
    if "\x00" in value:
        raise BoundsError(path, "holds a NUL character")


def check_label(value: str, path: str) -> None:
    """Raise BoundsError unless `value` is a label: at most MAX_LABEL characters of letters,
    digits, space and . _ : / @ + ( ) ~ - (reports group by labels and print them)."""
    if len(value) > MAX_LABEL:
        raise BoundsError(path, f"{len(value)} characters exceed {MAX_LABEL}")
    if not _LABEL.fullmatch(value):
        bad = _NOT_LABEL.search(value)
        assert bad is not None
        allowed = "letters, digits, space and . _ : / @ + ( ) ~ -"
        raise BoundsError(path, f"holds {bad.group()!r}; a label is {allowed}")


def fit_label(value: str) -> str:
    """`value` made a label (see `check_label`): other characters become `_`, cut to
    MAX_LABEL. What an honest agent announces."""
    return _NOT_LABEL.sub("_", value)[:MAX_LABEL]


_S = TypeVar("_S")


def check_count(values: tuple[_S, ...] | list[_S], path: str, limit: int) -> None:
    """Raise BoundsError if the list has more than `limit` entries."""
    if len(values) > limit:
        raise BoundsError(path, f"{len(values)} entries exceed {limit}")


def check_nesting(value: object, path: str, *, depth: int, values: int) -> None:
    """Raise BoundsError if a decoded JSON/TOML value nests deeper than `depth` containers
    or holds more than `values` values, or a string in it holds NUL. Iterative: it never
    recurses, so it is safe on any input that decoded."""
    stack: list[tuple[object, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, level = stack.pop()
        seen += 1
        if seen > values:
            raise BoundsError(path, f"holds more than {values} values")
        children: Iterable[object]
        if isinstance(item, Mapping):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = item
        else:
            if isinstance(item, str) and "\x00" in item:
                raise BoundsError(path, "holds a NUL character")
            continue
        if level > depth:
            raise BoundsError(path, f"nests deeper than {depth} levels")
        stack.extend((child, level + 1) for child in children)


def _short(value: object) -> str:
    """A value for an error message, never 16,000 digits long (nor a str() of a huge int,
    which Python refuses beyond 4,300 digits)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of ~{int(value.bit_length() * 0.30103)} digits"
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


# -- messages from agents --------------------------------------------------------------------
def check_outbox(message: OutboxMessage) -> None:
    """Raise BoundsError naming the first field of an agent's message outside the bounds:
    every value must be one the domain can act on and the database can store.

    For `open_rooms`, only what could harm the broker before it reads the request is
    checked here (depth and size of an inline scenario, list sizes, names); its room
    options are the broker's to refuse, with a rejection the buyer reads.
    """
    # At call time: messages imports this module for its limits.
    from mams.domain.messages import BuyerTurn, Hello, OpenRooms, SellerTurn

    if isinstance(message, BuyerTurn):
        _check_buyer_turn(message)
    elif isinstance(message, SellerTurn):
        _check_seller_turn(message)
    elif isinstance(message, Hello):
        _check_hello(message)
    elif isinstance(message, OpenRooms):
        _check_open_rooms_shape(message)


def _check_buyer_turn(turn: BuyerTurn) -> None:
    from mams.domain.messages import Accept, Say, WalkAway

    p = "buyer.turn"
    check_int(turn.round, f"{p}.round", 1, MAX_ROUNDS_LIMIT)
    action = turn.action
    if isinstance(action, Say):
        a = f"{p}.action(say)"
        check_text(action.text, f"{a}.text", MAX_TEXT)
        check_count(action.to, f"{a}.to", MAX_SELLERS_PER_ITEM)
        for i, agent in enumerate(action.to):
            check_text(agent, f"{a}.to[{i}]", MAX_AGENT_ID)
        if action.counter_price is not None:
            _check_wire_price(action.counter_price, f"{a}.counter_price")
    elif isinstance(action, Accept):
        a = f"{p}.action(accept)"
        check_text(action.seller, f"{a}.seller", MAX_AGENT_ID)
        _check_wire_price(action.unit_price, f"{a}.unit_price")
        check_int(action.quantity, f"{a}.quantity", 1, MAX_QUANTITY)
        check_text(action.text, f"{a}.text", MAX_TEXT)
    elif isinstance(action, WalkAway):
        check_text(action.text, f"{p}.action(walk_away).text", MAX_TEXT)
    _check_trace(p, turn.reasoning, turn.guardrails, turn.llm_calls)


def _check_seller_turn(turn: SellerTurn) -> None:
    p = "seller.turn"
    check_int(turn.round, f"{p}.round", 1, MAX_ROUNDS_LIMIT)
    check_text(turn.text, f"{p}.text", MAX_TEXT)
    if turn.offer is not None:
        _check_wire_price(turn.offer.unit_price, f"{p}.offer.unit_price")
        check_int(turn.offer.quantity, f"{p}.offer.quantity", 1, MAX_QUANTITY)
    _check_trace(p, turn.reasoning, turn.guardrails, turn.llm_calls)


def check_offer(offer: Offer, path: str) -> None:
    """Raise BoundsError unless the offer's price is a price (`price_problem`) and its
    quantity within 1..MAX_QUANTITY: what an honest seller sends."""
    check_price(offer.unit_price, f"{path}.unit_price")
    check_int(offer.quantity, f"{path}.quantity", 1, MAX_QUANTITY)


def _check_trace(
    path: str,
    reasoning: str,
    guardrails: tuple[GuardrailNote, ...],
    llm_calls: tuple[LLMCall, ...],
) -> None:
    check_text(reasoning, f"{path}.reasoning", MAX_TEXT)
    check_count(guardrails, f"{path}.guardrails", MAX_GUARDRAILS)
    for i, note in enumerate(guardrails):
        g = f"{path}.guardrails[{i}]"
        check_text(note.rule, f"{g}.rule", MAX_RULE)
        check_text(note.detail, f"{g}.detail", MAX_TEXT)
        check_text(note.attempted, f"{g}.attempted", MAX_TEXT)
        check_text(note.resolution, f"{g}.resolution", MAX_RULE)
    check_count(llm_calls, f"{path}.llm_calls", MAX_LLM_CALLS)
    total = 0
    for i, call in enumerate(llm_calls):
        total += check_llm_call(call, f"{path}.llm_calls[{i}]")
    if total > MAX_LLM_BODIES:
        raise BoundsError(
            f"{path}.llm_calls", f"bodies of {total} characters exceed {MAX_LLM_BODIES} in all"
        )


def check_llm_call(call: LLMCall, path: str) -> int:
    """Raise BoundsError naming the first field of a model call outside the bounds (labels,
    bodies, tokens, latency, cost); return the characters of its bodies."""
    for name in ("provider", "model", "purpose"):
        check_label(getattr(call, name), f"{path}.{name}")
    check_text(call.prompt_digest, f"{path}.prompt_digest", MAX_DIGEST)
    bodies = 0
    for name in ("request", "response", "tool_input", "text", "error"):
        body: str = getattr(call, name)
        check_text(body, f"{path}.{name}", MAX_LLM_BODY)
        bodies += len(body)
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        check_int(getattr(call, name), f"{path}.{name}", 0, MAX_TOKENS)
    check_int(call.retries, f"{path}.retries", 0, MAX_RETRIES)
    check_float(call.latency_ms, f"{path}.latency_ms", 0.0, MAX_LATENCY_MS)
    if call.cost_usd is not None:
        check_float(call.cost_usd, f"{path}.cost_usd", 0.0, MAX_COST_USD)
    return bodies


def _check_hello(hello: Hello) -> None:
    check_label(hello.brain, "hello.brain")
    check_int(hello.protocol, "hello.protocol", 0, MAX_PROTOCOL)


def _check_open_rooms_shape(request: OpenRooms) -> None:
    p = "open_rooms"
    if request.scenario is not None:
        check_nesting(
            request.scenario,
            f"{p}.scenario",
            depth=MAX_SCENARIO_DEPTH,
            values=MAX_SCENARIO_VALUES,
        )
    check_count(request.items, f"{p}.items", MAX_ROOMS_PER_REQUEST)
    for i, name in enumerate(request.items):
        check_text(name, f"{p}.items[{i}]", MAX_NAME)
    check_count(request.skip, f"{p}.skip", MAX_ROOMS_PER_REQUEST)
    for i, (name, _seed) in enumerate(request.skip):
        check_text(name, f"{p}.skip[{i}][0]", MAX_NAME)
    # max_rounds, round_timeout, seed and runs are the broker's to refuse, with a Rejected
    # the buyer reads (msgspec has already held the integers to 64 bits).


def check_committed(message: CommittedEvent) -> None:
    """Raise BoundsError if a committed event's seq is one the log cannot hold (int4 from
    1): an observer would otherwise take a forged seq as having seen the whole room."""
    check_int(message.seq, "committed.seq", 1, INT4_MAX)


# -- what honest agents send -----------------------------------------------------------------
_T = TypeVar("_T", bound="BuyerTurn | SellerTurn")


def fit_turn(turn: _T) -> _T:
    """The turn cut to the bounds `check_outbox` holds it to: texts, notes and model calls
    cut to their limits, NULs removed, labels made labels, numbers clamped; if the encoded
    turn would still exceed MAX_PAYLOAD, the model call bodies are cut further. What an
    honest agent publishes (its own brain's output is not trusted to be small).

    Prices are not touched: a price outside the bounds is a guardrail violation the agent
    repairs or falls back from, never silently changed."""
    from mams.domain.messages import Accept, BuyerTurn, Say, WalkAway, encode

    notes = tuple(
        msgspec.structs.replace(
            n,
            rule=_cut(n.rule, MAX_RULE),
            detail=_cut(n.detail, MAX_TEXT),
            attempted=_cut(n.attempted, MAX_TEXT),
            resolution=_cut(n.resolution, MAX_RULE),
        )
        for n in turn.guardrails[:MAX_GUARDRAILS]
    )
    calls = turn.llm_calls[:MAX_LLM_CALLS]
    changes: dict[str, object] = {"reasoning": _cut(turn.reasoning, MAX_TEXT), "guardrails": notes}
    if isinstance(turn, BuyerTurn):
        action = turn.action
        if isinstance(action, Say):
            action = msgspec.structs.replace(
                action,
                text=_cut(action.text, MAX_TEXT),
                to=tuple(_cut(a, MAX_AGENT_ID) for a in action.to[:MAX_SELLERS_PER_ITEM]),
            )
        elif isinstance(action, Accept | WalkAway):
            action = msgspec.structs.replace(action, text=_cut(action.text, MAX_TEXT))
        changes["action"] = action
    else:
        changes["text"] = _cut(turn.text, MAX_TEXT)
    body = min(MAX_LLM_BODY, MAX_LLM_BODIES // (5 * max(1, len(calls))))
    while True:
        changes["llm_calls"] = tuple(_fit_call(c, body) for c in calls)
        fitted = msgspec.structs.replace(turn, **changes)
        if body == 0 or len(encode(fitted)) <= MAX_PAYLOAD:
            return fitted
        body //= 2


def _fit_call(call: LLMCall, body: int) -> LLMCall:
    def clamp(value: int) -> int:
        return min(max(value, 0), MAX_TOKENS)

    latency = call.latency_ms
    latency = min(max(latency, 0.0), MAX_LATENCY_MS) if math.isfinite(latency) else 0.0

    return msgspec.structs.replace(
        call,
        provider=fit_label(call.provider),
        model=fit_label(call.model),
        purpose=fit_label(call.purpose),
        prompt_digest=_cut(call.prompt_digest, MAX_DIGEST),
        request=_cut(call.request, body),
        response=_cut(call.response, body),
        tool_input=_cut(call.tool_input, body),
        text=_cut(call.text, body),
        error=_cut(call.error, body),
        input_tokens=clamp(call.input_tokens),
        output_tokens=clamp(call.output_tokens),
        cache_read_tokens=clamp(call.cache_read_tokens),
        cache_write_tokens=clamp(call.cache_write_tokens),
        retries=min(max(call.retries, 0), MAX_RETRIES),
        latency_ms=latency,
        cost_usd=(  # an unknown cost, rather than a made-up one
            None
            if call.cost_usd is None or not math.isfinite(call.cost_usd)
            else min(max(call.cost_usd, 0.0), MAX_COST_USD)
        ),
    )


def _cut(text: str, limit: int) -> str:
    return text.replace("\x00", "")[:limit]
