"""Scenario validation: every rule, with the exact path and message it reports."""

from __future__ import annotations

import copy
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mams.domain.config import (
    AUTO_MODEL,
    BuyerItem,
    Problem,
    Scenario,
    ScenarioError,
    agent_id_of,
    load_scenario,
    parse_scenario,
    parse_scenario_text,
    scenario_to_raw,
)
from mams.domain.errors import MamsError
from mams.domain.opening import opening, scenario_of
from mams.domain.plan import PlanOptions

D = Decimal


def valid_raw() -> dict[str, Any]:
    """A small scenario that passes validation; tests break one thing at a time."""
    return {
        "name": "phones",
        "buyer": {
            "items": [
                {
                    "item_name": "iPhone 15 case",
                    "quantity": 2,
                    "min_price": D("8.00"),
                    "max_price": D("14.00"),
                },
                {
                    "item_name": "USB-C cable",
                    "quantity": 3,
                    "min_price": D("4.00"),
                    "max_price": D("9.00"),
                },
            ]
        },
        "sellers": [
            {
                "handle": "@TechMart",
                "style": "rude",
                "customer_retention_weight": D("0.2"),
                "profit_maximization_weight": D("0.8"),
                "inventory": [
                    {
                        "item_name": "iPhone 15 case",
                        "cost_price": D("6.00"),
                        "selling_price": D("18.00"),
                        "least_price": D("10.00"),
                    },
                    {
                        "item_name": "USB-C cable",
                        "cost_price": D("2.00"),
                        "selling_price": D("11.00"),
                        "least_price": D("5.00"),
                    },
                ],
            },
            {
                "handle": "@GadgetHub",
                "style": "neutral",
                "customer_retention_weight": D("0.5"),
                "profit_maximization_weight": D("0.5"),
                "inventory": [
                    {
                        "item_name": "iPhone 15 case",
                        "cost_price": D("5.00"),
                        "selling_price": D("15.00"),
                        "least_price": D("9.00"),
                    },
                    {
                        "item_name": "usb-c  CABLE",
                        "cost_price": D("2.50"),
                        "selling_price": D("8.00"),
                        "least_price": D("4.50"),
                    },
                ],
            },
        ],
    }


def problems_of(raw: object) -> list[Problem]:
    """The problems a raw scenario has; fails the test if it unexpectedly parses."""
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw)
    return info.value.problems


def as_pairs(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in problems]


def only_problem(raw: object) -> tuple[str, str]:
    problems = problems_of(raw)
    assert len(problems) == 1, problems
    return problems[0].path, problems[0].message


# -- the valid case ----------------------------------------------------------------------
def test_valid_scenario_parses_with_defaults_and_normalised_handles() -> None:
    scenario = parse_scenario(valid_raw())
    assert scenario.name == "phones"
    assert scenario.description == ""
    assert scenario.buyer.handle == "@Buyer"
    assert scenario.buyer.model == "auto"
    assert scenario.buyer.agent_id == "buyer"
    assert [s.agent_id for s in scenario.sellers] == ["techmart", "gadgethub"]
    assert scenario.buyer.items[0] == BuyerItem(
        item_name="iPhone 15 case", quantity=2, min_price=D("8.00"), max_price=D("14.00")
    )
    # Item names match ignoring case and repeated spaces.
    assert [s.handle for s in scenario.sellers_of("USB-C cable")] == ["@TechMart", "@GadgetHub"]
    assert scenario.buyer_item("iphone 15  CASE").quantity == 2


def test_handle_without_at_gets_one_and_default_name_comes_from_the_caller() -> None:
    raw = valid_raw()
    del raw["name"]
    raw["sellers"][0]["handle"] = "TechMart"
    scenario = parse_scenario(raw, default_name="from-file")
    assert scenario.name == "from-file"
    assert scenario.sellers[0].handle == "@TechMart"


def test_buyer_item_lookup_names_the_known_items() -> None:
    scenario = parse_scenario(valid_raw())
    with pytest.raises(ScenarioError) as info:
        scenario.buyer_item("Pixel case")
    assert as_pairs(info.value.problems) == [
        ("buyer.items", "no item 'Pixel case'; known: 'iPhone 15 case', 'USB-C cable'")
    ]


def test_scenario_error_is_a_mams_error_and_lists_every_problem_in_its_message() -> None:
    raw = valid_raw()
    raw["sellers"][0]["style"] = "grumpy"
    raw["buyer"]["items"][0]["quantity"] = 0
    with pytest.raises(MamsError) as info:
        parse_scenario(raw, source="x.toml")
    text = str(info.value)
    assert text.startswith("x.toml has 2 problem(s):\n")
    assert "  sellers[0].style: must be one of rude, neutral, sweet, got 'grumpy'" in text
    assert "  buyer.items[0].quantity: must be between 1 and 1000000, got 0" in text


# -- buyer items ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["item_name", "quantity", "min_price", "max_price"])
def test_buyer_item_required_fields(key: str) -> None:
    raw = valid_raw()
    del raw["buyer"]["items"][1][key]
    assert only_problem(raw) == (f"buyer.items[1].{key}", "is required")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be between 1 and 1000000, got 0"),
        (-3, "must be between 1 and 1000000, got -3"),
        (1_000_001, "must be between 1 and 1000000, got 1000001"),
        (D("2.5"), "must be a whole number, got Decimal('2.5')"),
        (True, "must be a whole number, got True"),
        ("2", "must be a whole number, got '2'"),
    ],
)
def test_buyer_quantity_bounds(value: object, message: str) -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["quantity"] = value
    assert only_problem(raw) == ("buyer.items[0].quantity", message)


@pytest.mark.parametrize("quantity", [1, 1_000_000])
def test_buyer_quantity_limits_are_inclusive(quantity: int) -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["quantity"] = quantity
    assert parse_scenario(raw).buyer.items[0].quantity == quantity


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (D("0"), "must be greater than 0, got 0.00"),
        (D("-1"), "must not be negative, got -1.00"),
        (D("1.234"), "must have at most 2 decimal places, got 1.234"),
        ("abc", "must be a number like 12.50, got 'abc'"),
        (True, "must be a number, not a boolean"),
        ([1], "must be a number like 12.50, got list"),
        (D("NaN"), "must be a finite number"),
        (D("1e30"), "is far too large, got 1E+30"),
        (D("10000000000"), "must be at most 99999999.99, got 10000000000.00"),
        (D("100000000"), "must be at most 99999999.99, got 100000000.00"),
    ],
)
def test_buyer_prices_must_be_positive_with_two_decimals(value: object, message: str) -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["min_price"] = value
    problems = problems_of(raw)
    assert ("buyer.items[0].min_price", message) in as_pairs(problems)
    assert len(problems) == 1


def test_prices_accept_ints_strings_and_dollar_signs_and_are_canonical_cents() -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["min_price"] = 8
    raw["buyer"]["items"][0]["max_price"] = " $14.5"
    item = parse_scenario(raw).buyer.items[0]
    assert (str(item.min_price), str(item.max_price)) == ("8.00", "14.50")


def test_buyer_min_must_not_exceed_max() -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["min_price"] = D("15.00")
    assert only_problem(raw) == ("buyer.items[0].max_price", "must be at least min_price (15.00)")


def test_buyer_min_equal_to_max_is_allowed() -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["min_price"] = D("14.00")
    assert parse_scenario(raw).buyer.items[0].min_price == D("14.00")


def test_duplicate_buyer_items_ignore_case_and_spacing() -> None:
    raw = valid_raw()
    raw["buyer"]["items"].append(
        {"item_name": "IPHONE 15   case", "quantity": 1, "min_price": 1, "max_price": 2}
    )
    assert only_problem(raw) == (
        "buyer.items[2].item_name",
        "duplicate of buyer.items[0] ('IPHONE 15   case')",
    )


def test_buyer_items_must_be_a_non_empty_array_and_buyer_is_required() -> None:
    raw = valid_raw()
    raw["buyer"]["items"] = []
    assert ("buyer.items", "must not be empty") in as_pairs(problems_of(raw))
    del raw["buyer"]["items"]
    assert ("buyer.items", "is required (a non-empty array)") in as_pairs(problems_of(raw))
    raw["buyer"]["items"] = {"item_name": "x"}
    assert ("buyer.items", "must be an array, got dict") in as_pairs(problems_of(raw))
    del raw["buyer"]
    assert as_pairs(problems_of(raw)) == [
        ("buyer", "is required (a [buyer] table with [[buyer.items]])")
    ]


def test_buyer_handle_and_model_are_validated() -> None:
    raw = valid_raw()
    raw["buyer"]["handle"] = "@Big Buyer"
    raw["buyer"]["model"] = "gpt-4"
    assert as_pairs(problems_of(raw)) == [
        (
            "buyer.handle",
            "must look like @TechMart (1-32 letters, digits, '_' or '-'), got '@Big Buyer'",
        ),
        (
            "buyer.model",
            'must be "auto", "baseline" or "<anthropic|openai|openrouter>:<model>", got \'gpt-4\'',
        ),
    ]


def test_llm_model_names_are_accepted() -> None:
    raw = valid_raw()
    raw["buyer"]["model"] = "anthropic:claude-sonnet-4-5"
    raw["sellers"][0]["model"] = "openrouter:google/gemini-2.5-flash"
    scenario = parse_scenario(raw)
    assert scenario.buyer.model == "anthropic:claude-sonnet-4-5"
    assert scenario.sellers[0].model == "openrouter:google/gemini-2.5-flash"


# -- sellers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "handle", ["@Tech Mart", "@tech.mart", "@", "@_x", "@" + "a" * 33, "@café", 42]
)
def test_seller_handle_format(handle: object) -> None:
    raw = valid_raw()
    raw["sellers"][1]["handle"] = handle
    assert only_problem(raw) == (
        "sellers[1].handle",
        f"must look like @TechMart (1-32 letters, digits, '_' or '-'), got {handle!r}",
    )


def test_seller_handles_are_unique_ignoring_case_and_at() -> None:
    raw = valid_raw()
    raw["sellers"][1]["handle"] = "techMART"
    assert only_problem(raw) == (
        "sellers[1].handle",
        "'techMART' is already used by sellers[0] (handles are unique, ignoring case)",
    )


def test_buyer_handle_must_not_be_a_seller_handle() -> None:
    raw = valid_raw()
    raw["sellers"][1]["handle"] = "@BUYER"  # clashes with the default @Buyer
    assert only_problem(raw) == ("buyer.handle", "'@Buyer' is also a seller's handle")


@pytest.mark.parametrize("style", ["grumpy", "Rude", "", 1])
def test_seller_style(style: object) -> None:
    raw = valid_raw()
    raw["sellers"][0]["style"] = style
    assert only_problem(raw) == (
        "sellers[0].style",
        f"must be one of rude, neutral, sweet, got {style!r}",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (D("1.5"), "must be between 0 and 1, got 1.5"),
        (D("-0.1"), "must be between 0 and 1, got -0.1"),
        (D("0.1234"), "must have at most 3 decimal places, got 0.1234"),
        (True, "must be a number between 0 and 1, got True"),
        ("lots", "must be a number between 0 and 1, got 'lots'"),
        (D("NaN"), "must be between 0 and 1, got NaN"),
    ],
)
def test_seller_weight_range(value: object, message: str) -> None:
    raw = valid_raw()
    raw["sellers"][0]["customer_retention_weight"] = value
    assert only_problem(raw) == ("sellers[0].customer_retention_weight", message)


def test_seller_weights_must_sum_to_one() -> None:
    raw = valid_raw()
    raw["sellers"][0]["customer_retention_weight"] = D("0.3")
    assert only_problem(raw) == (
        "sellers[0].profit_maximization_weight",
        "must sum to 1 with customer_retention_weight (0.3 + 0.8 = 1.1)",
    )


def test_integer_weights_zero_and_one_are_fine() -> None:
    raw = valid_raw()
    raw["sellers"][0]["customer_retention_weight"] = 0
    raw["sellers"][0]["profit_maximization_weight"] = 1
    seller = parse_scenario(raw).sellers[0]
    assert (seller.customer_retention_weight, seller.profit_maximization_weight) == (D(0), D(1))


@pytest.mark.parametrize(
    ("cost", "least", "selling", "problems"),
    [
        (
            "10.00",
            "10.00",
            "18.00",
            [("sellers[0].inventory[0].least_price", "must be greater than cost_price (10.00)")],
        ),
        (
            "11.00",
            "10.00",
            "18.00",
            [("sellers[0].inventory[0].least_price", "must be greater than cost_price (11.00)")],
        ),
        (
            "6.00",
            "19.00",
            "18.00",
            [("sellers[0].inventory[0].least_price", "must not exceed selling_price (18.00)")],
        ),
        (
            "20.00",
            "19.00",
            "18.00",
            [
                ("sellers[0].inventory[0].least_price", "must be greater than cost_price (20.00)"),
                ("sellers[0].inventory[0].least_price", "must not exceed selling_price (18.00)"),
            ],
        ),
    ],
)
def test_inventory_cost_below_least_at_most_selling(
    cost: str, least: str, selling: str, problems: list[tuple[str, str]]
) -> None:
    raw = valid_raw()
    entry = raw["sellers"][0]["inventory"][0]
    entry.update(cost_price=D(cost), least_price=D(least), selling_price=D(selling))
    assert as_pairs(problems_of(raw)) == problems


def test_inventory_least_equal_to_selling_and_zero_cost_are_fine() -> None:
    raw = valid_raw()
    entry = raw["sellers"][0]["inventory"][0]
    entry.update(cost_price=D("0"), least_price=D("18.00"))
    stock = parse_scenario(raw).sellers[0].inventory[0]
    assert (stock.cost_price, stock.least_price, stock.selling_price) == (D(0), D(18), D(18))


def test_inventory_cost_must_not_be_negative_but_selling_must_be_positive() -> None:
    raw = valid_raw()
    raw["sellers"][0]["inventory"][0]["cost_price"] = D("-1")
    raw["sellers"][0]["inventory"][1]["selling_price"] = D("0")
    assert as_pairs(problems_of(raw)) == [
        ("sellers[0].inventory[0].cost_price", "must not be negative, got -1.00"),
        ("sellers[0].inventory[1].selling_price", "must be greater than 0, got 0.00"),
    ]


@pytest.mark.parametrize("key", ["item_name", "cost_price", "selling_price", "least_price"])
def test_inventory_required_fields(key: str) -> None:
    raw = valid_raw()
    del raw["sellers"][1]["inventory"][0][key]
    assert only_problem(raw) == (f"sellers[1].inventory[0].{key}", "is required")


@pytest.mark.parametrize(
    "key", ["handle", "style", "customer_retention_weight", "profit_maximization_weight"]
)
def test_seller_required_fields(key: str) -> None:
    raw = valid_raw()
    del raw["sellers"][0][key]
    assert only_problem(raw) == (f"sellers[0].{key}", "is required")


def test_seller_inventory_is_required_and_non_empty() -> None:
    raw = valid_raw()
    raw["sellers"][1]["inventory"] = []
    assert only_problem(raw) == ("sellers[1].inventory", "must not be empty")


def test_duplicate_inventory_items() -> None:
    raw = valid_raw()
    raw["sellers"][1]["inventory"].append(dict(raw["sellers"][1]["inventory"][0]))
    assert only_problem(raw) == (
        "sellers[1].inventory[2].item_name",
        "duplicate of sellers[1].inventory[0] ('iPhone 15 case')",
    )


def test_sellers_must_be_a_non_empty_array_of_tables() -> None:
    raw = valid_raw()
    raw["sellers"] = []
    assert ("sellers", "must not be empty") in as_pairs(problems_of(raw))
    raw["sellers"] = ["@TechMart"]
    assert ("sellers[0]", "must be a table/object, got str") in as_pairs(problems_of(raw))
    assert as_pairs(problems_of([])) == [("", "must be a table/object, got list")]


# -- unknown fields, unstocked items, crowded items ------------------------------------------
@pytest.mark.parametrize(
    ("where", "key", "path", "message"),
    [
        ("top", "seller", "seller", "unknown field; did you mean 'sellers'?"),
        ("buyer", "itemz", "buyer.itemz", "unknown field; did you mean 'items'?"),
        (
            "item",
            "max_prise",
            "buyer.items[0].max_prise",
            "unknown field; did you mean 'max_price'?",
        ),
        ("seller", "stlye", "sellers[0].stlye", "unknown field; did you mean 'style'?"),
        (
            "stock",
            "costprice",
            "sellers[0].inventory[0].costprice",
            "unknown field; did you mean 'cost_price'?",
        ),
        (
            "top",
            "zzz",
            "zzz",
            "unknown field; allowed: name, description, buyer, sellers, strategies",
        ),
    ],
)
def test_unknown_field_with_did_you_mean(where: str, key: str, path: str, message: str) -> None:
    raw = valid_raw()
    target = {
        "top": raw,
        "buyer": raw["buyer"],
        "item": raw["buyer"]["items"][0],
        "seller": raw["sellers"][0],
        "stock": raw["sellers"][0]["inventory"][0],
    }[where]
    target[key] = 1
    assert (path, message) in as_pairs(problems_of(raw))


def test_item_nobody_stocks_gets_a_did_you_mean_hint() -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["item_name"] = "iPhone 15 cases"
    assert only_problem(raw) == (
        "buyer.items[0].item_name",
        "no seller stocks 'iPhone 15 cases'; did you mean 'iPhone 15 case'?",
    )


def test_item_nobody_stocks_without_a_close_match_lists_the_stock() -> None:
    raw = valid_raw()
    raw["buyer"]["items"][0]["item_name"] = "Garden hose"
    assert only_problem(raw) == (
        "buyer.items[0].item_name",
        "no seller stocks 'Garden hose'; sellers stock: "
        "'USB-C cable', 'iPhone 15 case', 'usb-c  CABLE'",
    )


def seller(i: int, item: str = "iPhone 15 case") -> dict[str, Any]:
    return {
        "handle": f"@Shop{i}",
        "style": "neutral",
        "customer_retention_weight": D("0.5"),
        "profit_maximization_weight": D("0.5"),
        "inventory": [
            {
                "item_name": item,
                "cost_price": D("1.00"),
                "selling_price": D("20.00"),
                "least_price": D("5.00"),
            },
            {
                "item_name": "USB-C cable",
                "cost_price": D("1.00"),
                "selling_price": D("20.00"),
                "least_price": D("5.00"),
            },
        ],
    }


def test_at_most_ten_sellers_per_item() -> None:
    raw = valid_raw()
    raw["sellers"] = [seller(i) for i in range(10)]
    assert len(parse_scenario(raw).sellers) == 10
    raw["sellers"].append(seller(10, item="Other thing"))  # 11 sellers, 10 on the case
    problems = problems_of(raw)
    assert as_pairs(problems) == [
        (
            "buyer.items[1].item_name",
            "11 sellers stock 'USB-C cable'; at most 10 may negotiate one item",
        )
    ]


# -- all at once ------------------------------------------------------------------------------
def test_every_problem_is_reported_at_once_in_document_order() -> None:
    raw = valid_raw()
    raw["colour"] = "blue"
    raw["buyer"]["items"][0]["quantity"] = 0
    raw["buyer"]["items"][1]["min_price"] = D("10.00")
    raw["sellers"][0]["style"] = "grumpy"
    raw["sellers"][0]["inventory"][1]["least_price"] = D("1.00")
    raw["sellers"][1]["handle"] = "@techmart"
    raw["sellers"][1]["profit_maximization_weight"] = D("0.6")
    assert as_pairs(problems_of(raw)) == [
        ("colour", "unknown field; allowed: name, description, buyer, sellers, strategies"),
        ("buyer.items[0].quantity", "must be between 1 and 1000000, got 0"),
        ("buyer.items[1].max_price", "must be at least min_price (10.00)"),
        ("sellers[0].style", "must be one of rude, neutral, sweet, got 'grumpy'"),
        ("sellers[0].inventory[1].least_price", "must be greater than cost_price (2.00)"),
        (
            "sellers[1].profit_maximization_weight",
            "must sum to 1 with customer_retention_weight (0.5 + 0.6 = 1.1)",
        ),
        (
            "sellers[1].handle",
            "'@techmart' is already used by sellers[0] (handles are unique, ignoring case)",
        ),
    ]


# -- files: TOML and JSON ------------------------------------------------------------------
TOML = """
name = "tiny"
description = "two sellers, one item"

[buyer]
handle = "@Shopper"

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.10
max_price = 8.30

[[sellers]]
handle = "@CableKing"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3

[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.10
selling_price = 9.99
least_price = 4.30
"""


def test_toml_parses_with_exact_decimals(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TOML, encoding="utf-8")
    scenario = load_scenario(path)
    assert scenario.name == "tiny"
    assert scenario.description == "two sellers, one item"
    assert scenario.buyer.handle == "@Shopper"
    item = scenario.buyer.items[0]
    assert (item.min_price, item.max_price) == (D("4.10"), D("8.30"))
    assert isinstance(item.max_price, Decimal)
    stock = scenario.sellers[0].inventory[0]
    assert str(stock.cost_price) == "2.10"  # a float would give 2.1000000000000000888
    assert scenario.sellers[0].customer_retention_weight == D("0.7")


def test_json_parses_to_the_same_scenario_with_exact_decimals(tmp_path: Path) -> None:
    toml_path = tmp_path / "tiny.toml"
    toml_path.write_text(TOML, encoding="utf-8")
    from_toml = load_scenario(toml_path)
    json_path = tmp_path / "tiny.json"
    json_path.write_text(
        json.dumps(json.loads(json.dumps(scenario_to_raw(from_toml))), indent=1)
        .replace('"4.10"', "4.10")
        .replace('"0.7"', "0.7"),
        encoding="utf-8",
    )
    assert "4.10," in json_path.read_text(encoding="utf-8")  # a JSON number, not a string
    assert load_scenario(json_path) == from_toml


def test_default_name_is_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-market.toml"
    path.write_text(TOML.replace('name = "tiny"', ""), encoding="utf-8")
    assert load_scenario(path).name == "my-market"


def test_invalid_toml_is_a_file_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[buyer\nitems = 1", encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.source == str(path)
    [problem] = info.value.problems
    assert problem.path == "file"
    assert problem.message.startswith("not valid TOML: ")


def test_invalid_json_is_a_file_problem() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario_text("{", fmt="json")
    [problem] = info.value.problems
    assert problem.path == "file"
    assert problem.message.startswith("not valid JSON: ")


def test_missing_file_is_a_file_problem(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.toml")
    assert as_pairs(info.value.problems) == [("file", "cannot read: No such file or directory")]


def test_toml_validation_problems_carry_the_file_as_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TOML.replace('style = "sweet"', 'style = "kind"'), encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path} has 1 problem(s):")
    assert as_pairs(info.value.problems) == [
        ("sellers[0].style", "must be one of rude, neutral, sweet, got 'kind'")
    ]


def test_agent_id_of() -> None:
    assert agent_id_of("@TechMart") == "techmart"
    assert agent_id_of("Cable_King-2") == "cable_king-2"
    with pytest.raises(ValueError, match="must be @ followed by"):
        agent_id_of("@Tech Mart")


# -- property: valid random scenarios parse and round-trip ---------------------------------
cents_st = st.integers(min_value=1, max_value=99_999_999).map(lambda c: Decimal(c) / 100)
names_st = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "Zs", "P")),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "")


@st.composite
def raw_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    item_names = draw(
        st.lists(names_st, min_size=1, max_size=4, unique_by=lambda s: " ".join(s.lower().split()))
    )
    # Keep names distinct after the normalisation the validator uses (casefold, spaces).
    keys = [" ".join(n.casefold().split()) for n in item_names]
    if len(set(keys)) != len(keys):
        item_names = item_names[:1]
    items = []
    for name in item_names:
        lo, hi = sorted([draw(cents_st), draw(cents_st)])
        items.append(
            {
                "item_name": name,
                "quantity": draw(st.integers(1, 1_000_000)),
                "min_price": lo,
                "max_price": hi,
            }
        )
    n_sellers = draw(st.integers(1, 6))
    sellers = []
    for i in range(n_sellers):
        retention = Decimal(draw(st.integers(0, 1000))) / 1000
        stock = []
        for name in item_names:
            cost_c = draw(st.integers(0, 10_000))
            least_c = draw(st.integers(cost_c + 1, cost_c + 10_000))
            sell_c = draw(st.integers(least_c, least_c + 10_000))
            stock.append(
                {
                    "item_name": name,
                    "cost_price": Decimal(cost_c) / 100,
                    "least_price": Decimal(least_c) / 100,
                    "selling_price": Decimal(sell_c) / 100,
                }
            )
        sellers.append(
            {
                "handle": f"@S{i}_" + draw(st.from_regex(r"[A-Za-z0-9_-]{0,20}", fullmatch=True)),
                "style": draw(st.sampled_from(["rude", "neutral", "sweet"])),
                "customer_retention_weight": retention,
                "profit_maximization_weight": 1 - retention,
                "inventory": stock,
                "model": draw(st.sampled_from(["baseline", "openai:gpt-4o-mini"])),
            }
        )
    return {
        "name": draw(names_st),
        # Any text but NUL, which PostgreSQL cannot store (refused: see tests/domain/test_bounds).
        "description": draw(st.text(max_size=50)).replace("\x00", ""),
        "buyer": {"handle": "@Buyer", "items": items},
        "sellers": sellers,
    }


@settings(max_examples=150, deadline=None)
@given(raw_scenarios())
def test_valid_random_scenarios_parse_and_round_trip(raw: dict[str, Any]) -> None:
    original = copy.deepcopy(raw)
    scenario = parse_scenario(raw)
    assert raw == original  # parsing never mutates its input
    assert isinstance(scenario, Scenario)
    assert len(scenario.sellers) == len(raw["sellers"])
    assert parse_scenario(scenario_to_raw(scenario)) == scenario
    # Through real JSON text as well: what a .json scenario file would hold.
    text = json.dumps(scenario_to_raw(scenario))
    assert parse_scenario_text(text, fmt="json") == scenario
    for item, raw_item in zip(scenario.buyer.items, raw["buyer"]["items"], strict=True):
        assert item.max_price == raw_item["max_price"]
        assert item.max_price.as_tuple().exponent == -2


@settings(max_examples=100, deadline=None)
@given(raw_scenarios())
def test_a_sessions_openings_give_back_its_scenario(raw: dict[str, Any]) -> None:
    # What an imported archive's rooms rebuild (`scenario_of`): everything but the name,
    # description and models, which no opening event carries.
    scenario = parse_scenario(raw)
    session = uuid.uuid4()
    rooms = [opening(scenario, session, item, PlanOptions(), {}) for item in scenario.buyer.items]
    rebuilt = scenario_of([*rooms, rooms[0]], name="imported")  # a repeated item: once
    r = msgspec.structs.replace
    assert rebuilt == r(
        scenario,
        name="imported",
        description="",
        buyer=r(scenario.buyer, model=AUTO_MODEL),
        sellers=tuple(r(s, model=AUTO_MODEL) for s in scenario.sellers),
    )


def test_rooms_of_two_buyers_make_no_scenario() -> None:
    scenario = parse_scenario_text(TOML, fmt="toml")
    item = scenario.buyer.items[0]
    mine = opening(scenario, uuid.uuid4(), item, PlanOptions(), {})
    theirs = msgspec.structs.replace(mine, buyer=msgspec.structs.replace(mine.buyer, handle="@B2"))
    with pytest.raises(ScenarioError, match="several buyers"):
        scenario_of([mine, theirs], name="x")
    with pytest.raises(ScenarioError, match="no room"):
        scenario_of([], name="x")
