"""domain/ids.py: the one agent-id rule, used by scenario configs and re-exported by the bus."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mams.bus
import mams.bus.subjects
from mams.domain import ids
from mams.domain.config import ScenarioError, agent_id_of, parse_scenario
from mams.domain.errors import MamsError
from mams.domain.ids import AgentId, AgentIdError, check_token


def test_the_bus_re_exports_the_domain_rule() -> None:
    # One class, not two copies: an AgentId made by the domain is the bus's AgentId.
    assert mams.bus.subjects.AgentId is AgentId
    assert mams.bus.AgentId is AgentId
    assert mams.bus.subjects.AgentIdError is AgentIdError
    assert mams.bus.subjects.TOKEN_RULE is ids.TOKEN_RULE


def test_agent_id_validates_and_handles_normalize() -> None:
    assert AgentId.from_handle("@TechMart") == AgentId("techmart")
    assert str(AgentId("shop_2-b")) == "shop_2-b"
    with pytest.raises(AgentIdError, match=r"invalid agent id 'TechMart'") as info:
        AgentId("TechMart")
    assert isinstance(info.value, MamsError)
    assert isinstance(info.value, ValueError)
    assert check_token("mams", what="subject prefix") == "mams"
    with pytest.raises(AgentIdError, match=r"invalid subject prefix 'a\.b'"):
        check_token("a.b", what="subject prefix")


@pytest.mark.parametrize(
    "handle",
    [
        "@\u212aelvin",  # KELVIN SIGN lowercases to ASCII 'k'
        "@\u0130stanbul",  # LATIN CAPITAL I WITH DOT ABOVE lowercases to 'i' + a combining dot
        "@Tech\u0301",
    ],
)
def test_a_handle_that_lowercases_into_ascii_is_refused(handle: str) -> None:
    # Before: AgentId.from_handle("@\u212aelvin") gave AgentId("kelvin"), the id of "@Kelvin",
    # while the scenario config refused that handle: two rules, and an id collision.
    with pytest.raises(AgentIdError, match="contains") as info:
        AgentId.from_handle(handle)
    assert info.value.value == handle
    with pytest.raises(ValueError, match="must be @ followed by"):
        agent_id_of(handle)


_HANDLE_TEXT = st.text(alphabet=st.sampled_from("aZ09_-@.\u212a\u0130é "), min_size=0, max_size=35)


@given(_HANDLE_TEXT)
def test_config_and_bus_derive_the_same_id(handle: str) -> None:
    try:
        expected: str | None = AgentId.from_handle(handle).value
    except AgentIdError:
        expected = None
    try:
        got: str | None = agent_id_of(handle)
    except AgentIdError:
        got = None
    assert got == expected


def _scenario(seller_handle: str) -> object:
    return {
        "name": "ids",
        "buyer": {
            "handle": "@Buyer",
            "items": [{"item_name": "cable", "quantity": 1, "min_price": 1, "max_price": 9}],
        },
        "sellers": [
            {
                "handle": seller_handle,
                "style": "neutral",
                "customer_retention_weight": "0.5",
                "profit_maximization_weight": "0.5",
                "inventory": [
                    {
                        "item_name": "cable",
                        "cost_price": 1,
                        "selling_price": 5,
                        "least_price": 2,
                    }
                ],
            }
        ],
    }


def test_a_scenario_refuses_a_handle_the_bus_refuses() -> None:
    assert parse_scenario(_scenario("@Kelvin")).sellers[0].agent_id == "kelvin"
    with pytest.raises(ScenarioError, match=r"sellers\[0\]\.handle"):
        parse_scenario(_scenario("@\u212aelvin"))
