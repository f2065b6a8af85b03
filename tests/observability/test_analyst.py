"""The LLM analyst, through the real anthropic / openai SDKs against the loopback fakes,
its review stored in (and read back from) a real PostgreSQL schema."""

from __future__ import annotations

import json

import pytest

from mams.actors.analyst import (
    NO_ANALYST,
    REVIEW_TOOL,
    AnalystError,
    analyst_model,
    analyst_prompt,
    review_negotiation,
)
from mams.actors.brains.llm.providers import ProviderConfigError
from mams.domain.events import Event
from mams.storage.eventstore import PostgresEventStore
from mams.storage.observations import load_observations, record_observations
from tests.domain.helpers import NID
from tests.llm.fakes import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_text,
    anthropic_tool_use,
    bad_request,
    openai_tool_call,
)
from tests.observability.helpers import ALPHA_REASONING, LEAK, flags, negotiation

REVIEW = (
    "The buyer opened broadly and took @Alpha's $12.00 in round 2, leaving $2.00 a unit on "
    "the table against @Alpha's $9.00 floor; @Alpha anchored high but leaked its cost."
)


@pytest.fixture
async def events() -> list[Event]:
    with FakeAnthropic() as fake:
        return await negotiation(fake)


# -- which model --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "env", "expected"),
    [
        (None, {}, None),
        (None, {"ANTHROPIC_API_KEY": "k"}, "anthropic:claude-sonnet-5"),
        (None, {"OPENROUTER_API_KEY": "k", "OPENAI_API_KEY": "k"}, "openrouter:"),
        (None, {"OPENAI_BASE_URL": "http://localhost:8000/v1"}, "openai:"),
        ("openrouter:google/gemini-2.5-flash", {}, "openrouter:google/gemini-2.5-flash"),
        (None, {"MAMS_ANALYST_MODEL": "openai:gpt-x", "ANTHROPIC_API_KEY": "k"}, "openai:gpt-x"),
        ("none", {"ANTHROPIC_API_KEY": "k"}, None),
        (None, {"MAMS_ANALYST_MODEL": "None", "ANTHROPIC_API_KEY": "k"}, None),
    ],
)
def test_analyst_model_resolution(
    override: str | None, env: dict[str, str], expected: str | None
) -> None:
    got = analyst_model(override, env)
    if expected is None or not expected.endswith(":"):
        assert got == expected
    else:
        assert got is not None
        assert got.startswith(expected)
        assert len(got) > len(expected)  # the provider's default model


def test_no_analyst_message_says_how_to_configure_one() -> None:
    for var in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "--analyst-model"):
        assert var in NO_ANALYST
    assert NO_ANALYST.startswith("computed metrics only")


# -- the prompt ------------------------------------------------------------------------------


def test_prompt_holds_private_facts_transcript_reasoning_outcome_and_flags(
    events: list[Event],
) -> None:
    prompt = analyst_prompt(events, flags(events))
    # Both sides' private facts, which neither side saw of the other.
    assert "hard maximum $14.00" in prompt
    assert "private target $8.00" in prompt
    assert prompt.count("private cost $5.00") == 3
    assert prompt.count("floor $9.00; weights") == 3
    # The transcript, as the parties saw it, and the private reasoning.
    assert "Best price for 2?" in prompt
    assert LEAK in prompt
    assert "Let me check stock." in prompt
    assert ALPHA_REASONING in prompt
    # The outcome and the surplus split: (14 - 12) / (14 - 9) = 40% to the buyer.
    assert "DEAL with @Alpha at $12.00 x 2" in prompt
    assert "the buyer kept 40% of that zone, the seller 60%" in prompt
    # The grounded findings.
    assert "leakage.seller_cost" in prompt
    assert "[high] leakage" in prompt


def test_prompt_rejects_a_log_without_its_opening(events: list[Event]) -> None:
    with pytest.raises(ValueError, match=r"negotiation\.started"):
        analyst_prompt(events[1:], [])


# -- the call ------------------------------------------------------------------------------


async def test_review_through_anthropic_is_stored_and_read_back(
    events: list[Event], store: PostgresEventStore
) -> None:
    found = flags(events)
    with FakeAnthropic() as fake:
        fake.queue(anthropic_tool_use("submit_review", {"review": REVIEW}, output_tokens=77))
        env = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": fake.url}
        review = await review_negotiation(events, found, "anthropic:claude-fake", env=env)
    [sent] = fake.requests
    assert sent["model"] == "claude-fake"
    assert sent["tool_choice"] == {"type": "tool", "name": REVIEW_TOOL.name}
    user = sent["messages"][0]["content"]
    assert user == analyst_prompt(events, found)
    assert "at most 150 words" in sent["system"][0]["text"]

    assert review.negotiation_id == NID
    assert review.model == "anthropic:claude-fake"
    assert review.text == REVIEW
    assert review.call is not None
    assert review.call.purpose == "analyst_review"
    assert review.call.output_tokens == 77
    assert review.call.latency_ms > 0
    assert json.loads(review.call.request)["messages"][0]["content"] == user
    assert json.loads(review.call.tool_input) == {"review": REVIEW}

    assert await record_observations(store, NID, [*found, review]) == 2
    assert await record_observations(store, NID, [review]) == 0  # idempotent by content
    assert await load_observations(store, NID) == [*found, review]


async def test_review_through_an_openai_compatible_server(events: list[Event]) -> None:
    with FakeOpenAI() as fake:
        fake.queue(openai_tool_call("submit_review", {"review": REVIEW}))
        env = {"OPENROUTER_API_KEY": "test-key", "OPENROUTER_BASE_URL": fake.url}
        review = await review_negotiation(events, [], "openrouter:google/gemini-fake", env=env)
    [sent] = fake.requests
    assert sent["model"] == "google/gemini-fake"
    assert sent["messages"][0]["role"] == "system"
    assert "temperature" not in sent
    assert "No quality flags." in sent["messages"][1]["content"]
    assert review.model == "openrouter:google/gemini-fake"
    assert review.text == REVIEW


async def test_a_model_that_ignores_the_tool_still_gives_its_prose(events: list[Event]) -> None:
    with FakeAnthropic() as fake:
        fake.queue(anthropic_text("  " + REVIEW + "\n"))
        env = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": fake.url}
        review = await review_negotiation(events, [], "anthropic:claude-fake", env=env)
    assert review.text == REVIEW


async def test_a_failed_call_raises_with_the_call_recorded(events: list[Event]) -> None:
    with FakeAnthropic() as fake:
        fake.queue(bad_request("model does not exist"))
        env = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": fake.url}
        with pytest.raises(AnalystError, match="HTTP 400") as caught:
            await review_negotiation(events, [], "anthropic:claude-fake", env=env)
    call = caught.value.call
    assert call.purpose == "analyst_review"
    assert "model does not exist" in call.response
    assert "HTTP 400" in call.error


async def test_an_empty_answer_is_an_error_not_an_empty_review(events: list[Event]) -> None:
    with FakeAnthropic() as fake:
        fake.queue(anthropic_tool_use("submit_review", {"review": "  "}))
        env = {"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": fake.url}
        with pytest.raises(AnalystError, match="without a review") as caught:
            await review_negotiation(events, [], "anthropic:claude-fake", env=env)
    assert caught.value.call.error == ""  # the call itself worked; its answer was empty


async def test_an_unconfigured_model_is_a_config_error(events: list[Event]) -> None:
    with pytest.raises(ProviderConfigError, match="ANTHROPIC_API_KEY"):
        await review_negotiation(events, [], "anthropic:claude-fake", env={})
