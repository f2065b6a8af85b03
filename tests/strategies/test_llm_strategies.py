"""The strategy paragraph in LLM agents' system prompts, through the real Anthropic SDK
against a loopback fake (tests/llm/fakes.py), in rooms run by `run_market`: the
paragraph reaches the request, none is added for `default`, and every `llm.called`
prompt digest differs by strategy (so a rerun rebuilds the exact prompt)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from mams.actors.brains.llm import providers
from mams.domain.events import LLMCalled
from mams.domain.strategies import find
from tests.llm.fakes import FakeAnthropic, Reply, anthropic_tool_use
from tests.strategies.helpers import events, play, with_strategies

MODEL = "anthropic:claude-fake"


def answer(body: dict[str, Any]) -> Reply:
    """The buyer walks away at once; a seller replies without an offer."""
    if body["tools"][0]["name"] == "buyer_action":
        return anthropic_tool_use(
            "buyer_action", {"reasoning": "", "action": "walk_away", "text": "Bye."}
        )
    return anthropic_tool_use(
        "seller_reply", {"reasoning": "", "text": "Hello.", "offer_unit_price": None}
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    for var in list(os.environ):
        if var.startswith(("ANTHROPIC_", "OPENAI_", "OPENROUTER_", "MAMS_")):
            monkeypatch.delenv(var)
    monkeypatch.setattr(providers, "_LIMITERS", {})
    with FakeAnthropic() as server:
        server.handler = answer
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def system_of(body: dict[str, Any]) -> str:
    system = body["system"]
    return system if isinstance(system, str) else "".join(part["text"] for part in system)


async def digests(name: str, fake: FakeAnthropic, side: str) -> tuple[set[str], list[str]]:
    """One room where `side` plays `name` with the fake model; its calls' prompt digests
    and the system prompts the fake received."""
    fake.requests.clear()
    if side == "buyer":
        scenario = with_strategies(buyer=name)
        [room], store = await play(scenario, seed=1, max_rounds=2, buyer_model=MODEL)
    else:
        scenario = with_strategies(sellers=name)
        [room], store = await play(scenario, seed=1, max_rounds=2, seller_model=MODEL)
    calls = [e.call for e in await events(store, room) if isinstance(e, LLMCalled)]
    assert calls
    return {c.prompt_digest for c in calls}, [system_of(b) for b in fake.requests]


async def test_the_buyer_strategy_paragraph_reaches_the_model_and_the_digest(
    fake: FakeAnthropic,
) -> None:
    default, default_systems = await digests("default", fake, "buyer")
    assert not any("strategy" in s for s in default_systems)
    seen = default
    for name in ("anchor_low", "cite_offers", "accept_first"):
        strategy = find("buyer", name)
        assert strategy is not None
        found, systems = await digests(name, fake, "buyer")
        assert systems
        assert all(f"Your negotiation strategy ({name}@1): {strategy.prompt}" in s for s in systems)
        assert not found & seen, name  # every digest differs by strategy
        seen |= found


async def test_the_seller_strategy_paragraph_reaches_the_model_and_the_digest(
    fake: FakeAnthropic,
) -> None:
    default, _ = await digests("default", fake, "seller")
    firm, systems = await digests("firm", fake, "seller")
    strategy = find("seller", "firm")
    assert strategy is not None
    assert systems
    assert all(strategy.prompt in s for s in systems)
    assert not firm & default
