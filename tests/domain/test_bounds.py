"""domain.bounds: what passes the boundary can be stored and acted on; what cannot is
refused naming the field and the limit, and never as anything but a msgspec error."""

from __future__ import annotations

import math
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mams.domain import bounds
from mams.domain.bounds import (
    MAX_LLM_CALLS,
    MAX_PAYLOAD,
    MAX_PRICE,
    MAX_TEXT,
    BoundsError,
    check_outbox,
    fit_label,
    fit_turn,
    price_problem,
)
from mams.domain.config import ScenarioError, parse_scenario, parse_scenario_text
from mams.domain.events import LLMCall, Offer, RoundOpened
from mams.domain.guardrails import PRICE_LIMIT
from mams.domain.messages import (
    Accept,
    BuyerTurn,
    CommittedEvent,
    GuardrailNote,
    Hello,
    OpenRooms,
    Say,
    SellerTurn,
    decode_committed,
    decode_inbox,
    decode_outbox,
    encode,
    encode_committed,
)

NID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def seller_turn(**fields: Any) -> SellerTurn:
    base: dict[str, Any] = {
        "negotiation_id": NID,
        "round": 1,
        "message_id": uuid.uuid4(),
        "text": "twelve each",
    }
    return SellerTurn(**(base | fields))


def call(**fields: Any) -> LLMCall:
    base: dict[str, Any] = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "purpose": "decide",
        "prompt_digest": "ab" * 32,
        "request": "{}",
    }
    return LLMCall(**(base | fields))


def refused(message: Any) -> str:
    """decode_outbox's reason for refusing the encoded message (it must refuse it)."""
    with pytest.raises(msgspec.ValidationError) as info:
        decode_outbox(encode(message))
    return str(info.value)


# -- the red team's messages ---------------------------------------------------------------
def test_an_offer_the_database_cannot_hold_is_refused_naming_field_and_limits() -> None:
    turn = seller_turn(offer=Offer(unit_price=Decimal("9999999999.999"), quantity=2))
    assert refused(turn) == (
        "out of bounds: seller.turn.offer.unit_price: 9999999999.999 has more than 2 "
        "decimals / exceeds 99999999.99"
    )


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
@pytest.mark.parametrize(
    ("decode", "frame"),
    [
        (decode_outbox, b'{"type":"hello","role":"seller","x":%s}'),
        (
            decode_outbox,
            b'{"type":"open_rooms","request_id":"%s","scenario":{"a":%%s}}' % str(NID).encode(),
        ),
        (decode_inbox, b'{"type":"welcome","agent_id":"a","x":%s}'),
        (decode_committed, b'{"negotiation_id":"%s","seq":1,"x":%%s}' % str(NID).encode()),
    ],
)
def test_deep_nesting_is_a_msgspec_error_never_a_recursion_error(
    decode: Any, frame: bytes, depth: int
) -> None:
    data = frame % (b"[" * depth + b"]" * depth)
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode(data)


def test_a_scenario_nested_below_the_decoders_limit_is_refused_by_depth() -> None:
    request = OpenRooms(request_id=uuid.uuid4(), scenario={"name": [[[[[[[[["x"]]]]]]]]]})
    assert refused(request).endswith("open_rooms.scenario: nests deeper than 8 levels")


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"input_tokens": 2**63 - 1}, "input_tokens"),
        ({"output_tokens": -1}, "output_tokens"),
        ({"cost_usd": 1e308}, "cost_usd"),
        ({"cost_usd": -0.5}, "cost_usd"),
        ({"latency_ms": 1e300}, "latency_ms"),
        ({"retries": 10**9}, "retries"),
        ({"request": "x" * 230_000}, "request"),
        ({"model": "gpt\x1b[2J"}, "model"),
        ({"provider": "a" * 101}, "provider"),
        ({"error": "a\x00b"}, "error"),
    ],
)
def test_self_reported_model_calls_are_bounded(fields: dict[str, Any], where: str) -> None:
    reason = refused(seller_turn(llm_calls=(call(**fields),)))
    assert f"seller.turn.llm_calls[0].{where}:" in reason


def test_many_calls_and_their_bodies_together_are_bounded() -> None:
    many = tuple(call() for _ in range(MAX_LLM_CALLS + 1))
    assert "seller.turn.llm_calls: 9 entries exceed 8" in refused(seller_turn(llm_calls=many))
    big = tuple(call(request="x" * 150_000, response="y" * 150_000) for _ in range(3))
    assert "in all" in refused(seller_turn(llm_calls=big))


def test_nan_and_infinity_never_reach_a_float_field() -> None:
    # JSON has no NaN; 1e999 overflows: msgspec refuses both before the bounds.
    data = encode(seller_turn(llm_calls=(call(),))).replace(
        b'"latency_ms":0.0', b'"latency_ms":1e999'
    )
    with pytest.raises(msgspec.ValidationError):
        decode_outbox(data)


@pytest.mark.parametrize(
    "label", ["baseline (no LLM)", "anthropic:claude-sonnet-4-5", "openrouter:meta-llama/x:free"]
)
def test_real_brain_labels_pass(label: str) -> None:
    assert decode_outbox(encode(Hello(role="seller", brain=label))) == Hello(
        role="seller", brain=label
    )


@pytest.mark.parametrize(
    "label", ["x" * 101, "evil\nlabel", "[bold]red[/bold]", "\u202egpt", "a\x00"]
)
def test_brain_labels_are_plain_and_bounded(label: str) -> None:
    assert "hello.brain:" in refused(Hello(role="seller", brain=label))
    fitted = fit_label(label)
    assert decode_outbox(encode(Hello(role="seller", brain=fitted))) == Hello(
        role="seller", brain=fitted
    )


def test_text_lists_and_rounds_are_bounded() -> None:
    assert "seller.turn.text: 4001 characters exceed 4000" in refused(
        seller_turn(text="x" * (MAX_TEXT + 1))
    )
    assert "seller.turn.round:" in refused(seller_turn(round=2**31))
    notes = tuple(
        GuardrailNote(rule="r", detail="d", attempted="a", resolution="fallback") for _ in range(17)
    )
    assert "seller.turn.guardrails:" in refused(seller_turn(guardrails=notes))
    say = BuyerTurn(
        negotiation_id=NID,
        round=1,
        message_id=uuid.uuid4(),
        action=Say(text="hi", to=tuple(f"s{i}" for i in range(11))),
    )
    assert "buyer.turn.action(say).to:" in refused(say)
    accept = BuyerTurn(
        negotiation_id=NID,
        round=1,
        message_id=uuid.uuid4(),
        action=Accept(seller="a", unit_price=Decimal("12.00"), quantity=2**40),
    )
    assert "buyer.turn.action(accept).quantity:" in refused(accept)


def test_prices_the_core_overrides_pass_to_it() -> None:
    # domain.guardrails overrides these (logging a guardrail trip); the boundary leaves
    # them to it, and its limit is the one the boundary assumes.
    assert Decimal(PRICE_LIMIT) == bounds.GUARDRAIL_PRICE_LIMIT
    for raw in ("NaN", "-Infinity", "sNaN", "-5.00", "0", "1e30", "9" * 16_000):
        turn = seller_turn(offer=Offer(unit_price=Decimal(raw), quantity=2))
        decoded = decode_outbox(encode(turn))
        assert isinstance(decoded, SellerTurn)


def test_a_committed_event_with_a_seq_the_log_cannot_hold_is_refused() -> None:
    good = CommittedEvent(negotiation_id=NID, seq=1, event=RoundOpened(round=1))
    assert decode_committed(encode_committed(good)) == good
    for seq in (0, 2**31, 2**62):
        bad = CommittedEvent(negotiation_id=NID, seq=seq, event=RoundOpened(round=1))
        with pytest.raises(msgspec.ValidationError, match=r"committed\.seq"):
            decode_committed(encode_committed(bad))


# -- properties ------------------------------------------------------------------------------
prices = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=3),
    st.integers(-(10**20), 10**20).map(lambda c: Decimal(c) / 100),
    st.sampled_from([MAX_PRICE, MAX_PRICE + Decimal("0.01"), Decimal("0.01"), Decimal("0.001")]),
)


@settings(max_examples=500, deadline=None)
@given(prices)
def test_a_price_that_passes_is_storable_in_numeric_12_2(value: Decimal) -> None:
    if price_problem(value) is not None:
        with pytest.raises(BoundsError):
            bounds.check_price(value, "p")
        return
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    assert exponent >= -2  # stored exactly, never rounded by numeric(12,2)
    assert value.quantize(Decimal("0.01")) == value
    assert Decimal("0") < value <= Decimal("9999999999.99")  # numeric(12,2)'s range
    assert value <= MAX_PRICE


@settings(max_examples=300, deadline=None)
@given(prices, st.integers(-(2**63), 2**63 - 1))
def test_an_offer_the_core_would_take_is_storable(price: Decimal, quantity: int) -> None:
    turn = seller_turn(offer=Offer(unit_price=price, quantity=quantity))
    problem: BoundsError | None = None
    try:
        check_outbox(turn)
    except BoundsError as exc:
        problem = exc
    if problem is not None:
        assert problem.path.startswith("seller.turn.offer.")
        return
    assert 1 <= quantity <= bounds.MAX_QUANTITY  # int4
    if price.is_finite() and 0 < price < PRICE_LIMIT:  # the core would take it as is
        assert price_problem(price) is None


texts = st.text(max_size=300)
calls = st.builds(
    LLMCall,
    provider=texts,
    model=texts,
    purpose=texts,
    prompt_digest=texts,
    request=st.text(max_size=3000).map(lambda t: t * 100),
    response=texts,
    input_tokens=st.integers(-(2**63), 2**63 - 1),
    latency_ms=st.floats(allow_nan=True, allow_infinity=True),
    cost_usd=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    retries=st.integers(-(2**31), 2**31),
)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(max_size=6000),
    reasoning=st.text(max_size=6000),
    notes=st.lists(
        st.builds(GuardrailNote, rule=texts, detail=texts, attempted=texts, resolution=texts),
        max_size=30,
    ),
    llm_calls=st.lists(calls, max_size=12),
)
def test_whatever_a_brain_produced_fit_turn_makes_a_turn_the_broker_takes(
    text: str, reasoning: str, notes: list[GuardrailNote], llm_calls: list[LLMCall]
) -> None:
    turn = seller_turn(
        text=text,
        reasoning=reasoning,
        guardrails=tuple(notes),
        llm_calls=tuple(llm_calls),
        offer=Offer(unit_price=Decimal("12.50"), quantity=2),
    )
    fitted = fit_turn(turn)
    data = encode(fitted)
    assert len(data) <= MAX_PAYLOAD
    assert decode_outbox(data) == fitted
    assert fitted.offer == turn.offer  # prices are never changed
    for c in fitted.llm_calls:
        assert math.isfinite(c.latency_ms)


# -- scenarios -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "toml"])
@pytest.mark.parametrize("opening", ["[", "{"])
def test_a_scenario_file_nested_too_deeply_is_a_scenario_error(fmt: str, opening: str) -> None:
    depth = 5_000
    close = "}" if opening == "{" else "]"
    if fmt == "json":
        inner = ('{"a":' * depth + "1" if opening == "{" else "[" * depth) + close * depth
        text = f'{{"name": {inner}}}'
    else:
        inner = ("{a=" * depth + "1" if opening == "{" else "[" * depth) + close * depth
        text = f"name = {inner}\n"
    with pytest.raises(ScenarioError) as info:
        parse_scenario_text(text, fmt=fmt)  # type: ignore[arg-type]
    assert "nested too deeply" in str(info.value)


def test_a_scenario_holding_a_16000_digit_number_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="more than 4300 digits"):
        parse_scenario_text(f'{{"name": {"9" * 16_000}}}', fmt="json")


def test_a_deep_raw_scenario_is_refused_without_recursion() -> None:
    raw: Any = "x"
    for _ in range(100_000):  # far beyond the interpreter's recursion limit
        raw = [raw]
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"name": raw}, source="open_rooms.scenario")
    assert str(info.value).endswith("scenario: nests deeper than 8 levels")


def test_room_options_have_one_range_whoever_sets_them() -> None:
    assert bounds.room_option_problem("max_rounds", 2) is None
    assert bounds.room_option_problem("max_rounds", 101) == "must be from 2 to 100"
    assert bounds.room_option_problem("round_timeout", 0.1) is None
    assert bounds.room_option_problem("round_timeout", float("nan")) == (
        "must be from 0.1 to 86400 seconds"
    )
    assert bounds.room_option_problem("runs", 10_001) == "must be from 1 to 10000"
    assert bounds.room_option_problem("seed", -(2**62)) is None
    assert bounds.room_option_problem("seed", 2**63) == f"must be from {-(2**62)} to {2**62}"
