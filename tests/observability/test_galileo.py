"""Galileo export, offline: a stored negotiation (real PostgreSQL) goes through the real
`galileo` SDK's GalileoLogger, and the SDK's own `ingestion_hook` captures the
`TracesIngestRequest` it would send. No network, no key."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from mams.actors.galileo import (
    AgentSpanSpec,
    GalileoExportError,
    export_negotiation,
    galileo_enabled,
    trace_of,
)
from mams.domain.errors import ConfigError
from mams.domain.events import AnalystReviewed, Event, LLMCalled
from mams.storage.eventstore import PostgresEventStore
from mams.storage.observations import record_observations
from tests.domain.helpers import NID
from tests.llm.fakes import FakeAnthropic
from tests.observability.helpers import (
    ALPHA_REASONING,
    BUYER_REASONING_1,
    LEAK,
    flags,
    negotiation,
    store_events,
)

REVIEW = "The buyer paid $12.00, 40% of the zone to the buyer; @Alpha leaked its cost."


class Captured:
    """An ingestion hook: keeps what the SDK would have sent, as JSON-ready dicts."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # the SDK calls sync hooks from a worker thread

    def __call__(self, request: Any) -> None:
        with self.lock:
            self.requests.append(request.model_dump(mode="json"))

    def trace(self) -> dict[str, Any]:
        [request] = self.requests
        [trace] = request["traces"]
        return dict(trace)


@pytest.fixture
async def events(store: PostgresEventStore) -> list[Event]:
    """The known negotiation, stored, with its flag and an analyst review observed."""
    with FakeAnthropic() as fake:
        events = await negotiation(fake)
    await store_events(store, events)
    review = AnalystReviewed(negotiation_id=NID, model="anthropic:claude-fake", text=REVIEW)
    await record_observations(store, NID, [*flags(events), review])
    return events


async def test_a_negotiation_becomes_one_trace_of_agent_turns_and_llm_calls(
    store: PostgresEventStore, events: list[Event]
) -> None:
    hook = Captured()
    assert await export_negotiation(store, NID, env={}, ingestion_hook=hook)
    trace = hook.trace()
    assert trace["type"] == "trace"
    assert trace["external_id"] == str(NID)
    assert trace["name"] == "negotiation iPhone 15 case"
    assert "@Buyer (anthropic:claude-fake) wants 2 x 'iPhone 15 case'" in trace["input"]
    assert trace["output"] == "DEAL with @Alpha at $12.00 x 2 after 2 round(s)"
    meta = trace["user_metadata"]
    assert meta["negotiation_id"] == str(NID)
    assert meta["outcome"] == "deal"
    assert meta["deal_seller"] == "alpha"
    assert meta["deal_unit_price"] == "12.00"
    assert meta["buyer_brain"] == "anthropic:claude-fake"
    # The grounded flags, attached as metadata.
    assert meta["flags"] == "1"
    assert meta["flags.leakage"] == "1"
    assert "leakage.seller_cost alpha r1" in meta["flag.0"]
    assert meta["analyst_review"] == REVIEW
    assert set(trace["tags"]) >= {"mams", "outcome:deal", "anthropic:claude-fake", "flagged"}

    spans = trace["spans"]
    assert [(s["type"], s["name"]) for s in spans] == [
        ("agent", "@Buyer r1 say"),
        ("agent", "@Alpha r1 offer"),
        ("agent", "@Beta r1 offer"),
        ("agent", "@Gamma r1 reply"),
        ("agent", "@Buyer r2 accept"),
    ]
    buyer1, alpha, beta, gamma, accept = spans
    assert buyer1["output"] == "Best price for 2?"
    assert buyer1["user_metadata"]["reasoning"] == BUYER_REASONING_1
    assert buyer1["user_metadata"]["role"] == "buyer"
    assert "flags" not in buyer1["user_metadata"]
    # A seller's span: what it was told, what it said, its private side, its flag.
    assert alpha["input"] == "r1 @Buyer: Best price for 2?"
    assert alpha["output"] == f"{LEAK} [offer $12.00 x 2]"
    assert alpha["user_metadata"]["reasoning"] == ALPHA_REASONING
    assert alpha["user_metadata"]["style"] == "neutral"
    assert "offer_below_floor (repaired)" in alpha["user_metadata"]["guardrails"]
    assert alpha["user_metadata"]["flags.leakage"] == "1"
    assert "flags" not in beta["user_metadata"]
    assert gamma["output"] == "Let me check stock."
    # The buyer's next turn was told every reply since its last one.
    assert accept["input"].splitlines() == [
        f"r1 @Alpha: {LEAK} [offer $12.00 x 2]",
        "r1 @Beta: $13.00 each. [offer $13.00 x 2]",
        "r1 @Gamma: Let me check stock.",
    ]
    assert accept["output"] == "Deal, @Alpha. [accept @Alpha at $12.00 x 2]"

    # Each turn holds the LLM span of the call behind it, with the recorded figures.
    calls = [e.call for e in events if isinstance(e, LLMCalled)]
    llm_spans = [child for span in spans for child in span["spans"]]
    assert len(llm_spans) == len(calls) == 5
    for span, call in zip(llm_spans, calls, strict=True):
        assert span["type"] == "llm"
        assert span["model"] == "claude-fake"
        assert span["metrics"]["num_input_tokens"] == 120
        assert span["metrics"]["num_output_tokens"] == 40
        assert span["metrics"]["duration_ns"] == int(call.latency_ms * 1_000_000) > 0
        assert span["user_metadata"]["provider"] == "anthropic"
        assert span["input"][0] == {
            "role": "system",
            "content": "You negotiate.",
            "tool_call_id": None,
            "tool_calls": None,
        }
        [tool_call] = span["output"]["tool_calls"]
        assert tool_call["function"]["arguments"] == call.tool_input
    assert alpha["spans"][0]["output"]["tool_calls"][0]["function"]["name"] == "seller_reply"
    assert buyer1["spans"][0]["input"][1]["content"] == "round 1"


async def test_nothing_is_exported_without_a_key(
    store: PostgresEventStore, events: list[Event]
) -> None:
    assert not galileo_enabled({})
    assert not galileo_enabled({"GALILEO_API_KEY": "  "})
    assert galileo_enabled({"GALILEO_API_KEY": "gk"})
    assert await export_negotiation(store, NID, env={}) is False


async def test_an_unknown_negotiation_is_a_config_error(store: PostgresEventStore) -> None:
    with pytest.raises(ConfigError, match="not in the log"):
        await export_negotiation(store, uuid.uuid4(), env={}, ingestion_hook=Captured())


async def test_trace_of_an_unfinished_log(store: PostgresEventStore, events: list[Event]) -> None:
    rows = await store.read(NID)
    # Up to and including Gamma's LLM call, before its reply was committed.
    gamma_call = max(
        i for i, e in enumerate(events) if isinstance(e, LLMCalled) and e.agent == "gamma"
    )
    trace = trace_of(rows[: gamma_call + 1], [])
    assert trace.output == "(not finished)"
    assert trace.metadata["status"] == "open"
    assert trace.metadata["flags"] == 0
    last = trace.spans[-1]
    assert isinstance(last, AgentSpanSpec)
    assert last.name == "@Gamma r1 no_action"
    assert last.output == "(no action committed)"
    assert [c.model for c in last.llm] == ["claude-fake"]


async def test_an_unreachable_galileo_is_a_clear_error(
    store: PostgresEventStore, events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real path (no hook): the SDK reads its key and URL from the process environment;
    # port 1 on the loopback refuses connections, so nothing leaves the machine.
    monkeypatch.setenv("GALILEO_API_KEY", "test-key")
    monkeypatch.setenv("GALILEO_CONSOLE_URL", "http://127.0.0.1:1")
    with pytest.raises(GalileoExportError, match="cannot reach Galileo project 'mams'"):
        await export_negotiation(store, NID)
