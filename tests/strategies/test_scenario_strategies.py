"""The `strategy` field and `[strategies.<name>]` in scenario files: names checked against
the built-ins and the scenario's own, every problem with its path; a scenario-defined
strategy is recorded in full in its rooms' terms, so the log alone rebuilds it; logs from
before strategies decode as `default`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from mams.domain.config import (
    ScenarioError,
    parse_scenario,
    parse_seller,
    scenario_to_raw,
)
from mams.domain.events import BuyerTerms, SellerTerms
from mams.domain.opening import scenario_of
from mams.domain.strategies import resolve
from tests.integration.scenarios import phone
from tests.strategies.helpers import play, started, with_strategies

MINE = {"side": "buyer", "version": 2, "prompt": "Ask twice, then settle.", "base": "patient"}


def problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)
    return [(p.path, p.message) for p in caught.value.problems]


def raw_phone() -> dict[str, Any]:
    return scenario_to_raw(phone())


def test_unknown_names_are_refused_with_their_path_and_a_did_you_mean() -> None:
    raw = raw_phone()
    raw["buyer"]["strategy"] = "anchr_low"
    raw["sellers"][1]["strategy"] = "frim"
    raw["sellers"][2]["strategy"] = "zzz"
    assert problems(raw) == [
        ("buyer.strategy", "unknown buyer strategy 'anchr_low'; did you mean 'anchor_low'?"),
        ("sellers[1].strategy", "unknown seller strategy 'frim'; did you mean 'firm'?"),
        (
            "sellers[2].strategy",
            "unknown seller strategy 'zzz'; known: default, firm, flexible, quick_close",
        ),
    ]


def test_a_strategy_of_the_other_side_a_missing_version_or_a_non_string_is_refused() -> None:
    raw = raw_phone()
    raw["buyer"]["strategy"] = "firm"
    raw["sellers"][0]["strategy"] = "firm@7"
    raw["sellers"][1]["strategy"] = 3
    found = problems(raw)
    assert found[0][0] == "buyer.strategy"
    assert found[0][1].startswith("'firm' is a seller strategy; buyer strategies: default,")
    assert found[1:] == [
        ("sellers[0].strategy", "seller strategy 'firm' has no version 7"),
        ("sellers[1].strategy", 'must name a strategy, e.g. "default", got 3'),
    ]


def test_a_part_alone_checks_its_strategy_against_the_built_ins() -> None:
    seller = raw_phone()["sellers"][0]
    assert parse_seller({**seller, "strategy": "quick_close"}).strategy == "quick_close"
    with pytest.raises(ScenarioError) as caught:
        parse_seller({**seller, "strategy": "quick"})
    assert [str(p) for p in caught.value.problems] == [
        "strategy: unknown seller strategy 'quick'; did you mean 'quick_close'?"
    ]


def test_bad_definitions_are_refused_each_with_its_path() -> None:
    raw = raw_phone()
    raw["strategies"] = {
        "patient": {"side": "buyer", "prompt": "x"},
        "two words": {"side": "buyer", "prompt": "x"},
        "mine": {"side": "both", "version": 0, "prompt": " ", "promt": "x"},
        "theirs": {"side": "seller", "prompt": "Hold.", "base": "anchor_low"},
    }
    raw["buyer"]["strategy"] = "mine"  # defined, badly: reported at its definition only
    assert problems(raw) == [
        ("strategies.patient", "'patient' is a built-in strategy's name; choose another"),
        ("strategies.two words", "a strategy's name is 1-40 letters, digits, '_' or '-'"),
        ("strategies.mine.promt", "unknown field; did you mean 'prompt'?"),
        ("strategies.mine.side", "must be one of buyer, seller, got 'both'"),
        ("strategies.mine.version", "must be a whole number from 1 to 1000000, got 0"),
        (
            "strategies.mine.prompt",
            "must be a non-empty string (the paragraph an LLM agent is given)",
        ),
        (
            "strategies.theirs.base",
            "must name a built-in seller strategy (default, firm, flexible, quick_close), "
            "got 'anchor_low'",
        ),
    ]


def test_a_scenario_defined_strategy_plays_its_base_and_round_trips() -> None:
    scenario = with_strategies(buyer="mine", defined={"mine": MINE})
    [mine] = scenario.strategies
    assert (mine.label, mine.base, mine.prompt) == ("mine@2", "patient@1", MINE["prompt"])
    assert mine.rules == resolve("buyer", "patient").rules
    assert parse_scenario(scenario_to_raw(scenario)) == scenario
    # A file without strategies keeps its mapping as before (no strategy keys).
    raw = raw_phone()
    assert "strategies" not in raw
    assert all("strategy" not in agent for agent in (raw["buyer"], *raw["sellers"]))


async def test_the_log_keeps_a_defined_strategy_in_full_and_rebuilds_the_scenario() -> None:
    scenario = with_strategies(buyer="mine", sellers="firm", defined={"mine": MINE})
    [room], store = await play(scenario, seed=2)
    opened = await started(store, room)
    assert (opened.buyer.strategy, opened.buyer.strategy_base) == ("mine@2", "patient@1")
    assert opened.buyer.strategy_prompt == MINE["prompt"]
    assert {(s.strategy, s.strategy_prompt) for s in opened.sellers} == {("firm@1", "")}
    rebuilt = scenario_of([opened], name="again")
    assert rebuilt.buyer.strategy == "mine"
    assert {s.strategy for s in rebuilt.sellers} == {"firm@1"}
    assert rebuilt.strategies == scenario.strategies


def test_terms_from_before_strategies_decode_as_default_and_default_is_left_out() -> None:
    old = (
        b'{"agent_id":"buyer","handle":"@Buyer","quantity":2,"min_price":"8.00",'
        b'"max_price":"14.00","brain":"baseline (no LLM)"}'
    )
    terms = msgspec.json.decode(old, type=BuyerTerms)
    assert (terms.strategy, terms.strategy_prompt, terms.strategy_base) == ("default", "", "")
    assert msgspec.json.encode(terms) == old
    seller = SellerTerms(
        agent_id="s",
        handle="@S",
        style="rude",
        customer_retention_weight=Decimal("0.5"),
        profit_maximization_weight=Decimal("0.5"),
        cost_price=Decimal("1"),
        selling_price=Decimal("3"),
        least_price=Decimal("2"),
        brain="baseline",
        strategy="firm@1",
    )
    assert b'"strategy":"firm@1"' in msgspec.json.encode(seller)
