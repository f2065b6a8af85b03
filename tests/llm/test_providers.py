"""Providers through the real anthropic / openai SDKs against loopback fake servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anthropic._data import DEPRECATED_MODELS

from mams.actors.brains.llm import providers
from mams.actors.brains.llm.pricing import estimate_cost
from mams.actors.brains.llm.providers import (
    DEFAULT_MODELS,
    AnthropicProvider,
    ChatMessage,
    LLMCallError,
    LLMRequest,
    OpenAIProvider,
    ProviderConfigError,
    ToolSpec,
    available_llm,
    provider_for,
)
from mams.domain.errors import MamsError
from tests.llm.fakes import (
    FakeAnthropic,
    FakeLLMServer,
    FakeOpenAI,
    Reply,
    anthropic_text,
    anthropic_tool_use,
    bad_request,
    openai_json_content,
    openai_text,
    openai_tool_call,
    rate_limited,
    server_error,
)

OFFER = ToolSpec(
    name="make_offer",
    description="Propose a price to the other party.",
    parameters={
        "type": "object",
        "properties": {"price": {"type": "number"}, "message": {"type": "string"}},
        "required": ["price", "message"],
    },
)
REQUEST = LLMRequest(
    system="You are a buyer. Stay under 100.",
    messages=(
        ChatMessage("user", "The seller asks 120."),
        ChatMessage("assistant", "I offered 80."),
        ChatMessage("user", "The seller counters at 110."),
    ),
    tool=OFFER,
    max_tokens=256,
    temperature=0.5,
)
ARGS = {"price": 90, "message": "Meet me at 90?"}
FAST = {"backoff": 0.001, "max_backoff": 0.01}


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_limiters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-wide limiters would leak sizes between tests."""
    monkeypatch.setattr(providers, "_LIMITERS", {})


def anthropic_provider(fake: FakeAnthropic, **kwargs: Any) -> AnthropicProvider:
    return AnthropicProvider(
        "claude-haiku-4-5", api_key="test-key", base_url=fake.url, **{**FAST, **kwargs}
    )


def openai_provider(fake: FakeOpenAI, **kwargs: Any) -> OpenAIProvider:
    return OpenAIProvider("gpt-4o", api_key="test-key", base_url=fake.url, **{**FAST, **kwargs})


FLAVOURS = pytest.mark.parametrize("flavour", ["anthropic", "openai"])


def make(fake: FakeLLMServer, **kwargs: Any) -> AnthropicProvider | OpenAIProvider:
    if isinstance(fake, FakeAnthropic):
        return anthropic_provider(fake, **kwargs)
    assert isinstance(fake, FakeOpenAI)
    return openai_provider(fake, **kwargs)


def good_reply(flavour: str) -> Reply:
    if flavour == "anthropic":
        return anthropic_tool_use(OFFER.name, ARGS)
    return openai_tool_call(OFFER.name, ARGS)


@pytest.fixture
def fake(flavour: str) -> Iterator[FakeLLMServer]:
    server: FakeLLMServer = FakeAnthropic() if flavour == "anthropic" else FakeOpenAI()
    with server:
        yield server


# -- the happy path -----------------------------------------------------------------------


async def test_anthropic_tool_call_and_request_body(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(anthropic_tool_use(OFFER.name, ARGS, text="Let me think."))
    async with anthropic_provider(fake_anthropic) as provider:
        response = await provider.complete(REQUEST)

    assert response.tool_input == ARGS
    assert response.text == "Let me think."
    assert (response.provider, response.model, response.retries) == (
        "anthropic",
        "claude-haiku-4-5",
        0,
    )
    [sent] = fake_anthropic.requests
    assert sent["system"] == [
        {"type": "text", "text": REQUEST.system, "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["tools"] == [
        {"name": OFFER.name, "description": OFFER.description, "input_schema": OFFER.parameters}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": OFFER.name}
    assert sent["messages"] == [{"role": m.role, "content": m.content} for m in REQUEST.messages]
    assert (sent["model"], sent["max_tokens"]) == ("claude-haiku-4-5", 256)
    # API 2026-10-21 answers 400 to any sampling parameter, so temperature is not sent.
    assert "temperature" not in sent
    # What is recorded is what was sent and what came back, byte for byte.
    assert json.loads(response.request_body) == sent
    assert json.loads(response.response_body)["content"][1]["input"] == ARGS
    assert response.latency_ms > 0


async def test_openai_tool_call_and_request_body(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_tool_call(OFFER.name, ARGS))
    async with openai_provider(fake_openai) as provider:
        response = await provider.complete(REQUEST)

    assert response.tool_input == ARGS
    assert response.text == ""
    [sent] = fake_openai.requests
    assert sent["messages"] == [
        {"role": "system", "content": REQUEST.system},
        *({"role": m.role, "content": m.content} for m in REQUEST.messages),
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": OFFER.name,
                "description": OFFER.description,
                "parameters": OFFER.parameters,
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": OFFER.name}}
    # A base URL means a compatible server, which knows max_tokens.
    assert sent["max_tokens"] == 256
    assert "response_format" not in sent
    assert json.loads(response.request_body) == sent
    assert fake_openai.headers[0]["authorization"] == "Bearer test-key"


async def test_openai_json_schema_mode(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_json_content(ARGS), openai_text(f"```json\n{json.dumps(ARGS)}\n```"))
    async with openai_provider(fake_openai, structured="json_schema") as provider:
        response = await provider.complete(REQUEST)
        fenced = await provider.complete(REQUEST)

    assert response.tool_input == ARGS
    assert response.text == ""
    assert fenced.tool_input == ARGS  # local models like to fence their JSON
    sent = fake_openai.requests[0]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": OFFER.name,
            "description": OFFER.description,
            "schema": OFFER.parameters,
        },
    }
    assert "tools" not in sent
    assert "tool_choice" not in sent


async def test_official_openai_gets_max_completion_tokens() -> None:
    provider = OpenAIProvider("gpt-5.5", api_key="k")
    async with provider:
        params = provider.params(REQUEST)
    assert params["max_completion_tokens"] == 256
    assert "max_tokens" not in params
    assert params["temperature"] == 0.5
    assert provider.base_url.startswith("https://api.openai.com/v1")


def test_empty_system_prompt_is_left_out() -> None:
    bare = LLMRequest(system="", messages=REQUEST.messages, tool=OFFER)
    anthropic = AnthropicProvider("claude-haiku-4-5", api_key="k")
    openai = OpenAIProvider("gpt-4o", api_key="k")
    assert "system" not in anthropic.params(bare)
    assert openai.params(bare)["messages"][0]["role"] == "user"


# -- the model misbehaves -----------------------------------------------------------------


async def test_openai_malformed_arguments(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_tool_call(OFFER.name, '{"price": 90, "message": '))
    async with openai_provider(fake_openai) as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input is None
    assert response.text == '{"price": 90, "message": '


async def test_openai_arguments_that_are_not_an_object(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_tool_call(OFFER.name, "[90]"))
    async with openai_provider(fake_openai) as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input is None
    assert response.text == "[90]"


async def test_json_schema_mode_with_prose(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_text("I would rather talk."))
    async with openai_provider(fake_openai, structured="json_schema") as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input is None
    assert response.text == "I would rather talk."


async def test_anthropic_prose_instead_of_tool(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(anthropic_text("I will not name a price."))
    async with anthropic_provider(fake_anthropic) as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input is None
    assert response.text == "I will not name a price."


async def test_openai_prose_instead_of_tool(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_text("I will not name a price."))
    async with openai_provider(fake_openai) as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input is None
    assert response.text == "I will not name a price."


async def test_openai_call_to_another_tool_is_not_taken(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_tool_call("walk_away", {"why": "too dear"}))
    async with openai_provider(fake_openai) as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input is None


# -- retries and failures -----------------------------------------------------------------


@FLAVOURS
async def test_rate_limit_then_success(fake: FakeLLMServer, flavour: str) -> None:
    fake.queue(rate_limited(0, flavour=flavour), good_reply(flavour))
    async with make(fake) as provider:
        response = await provider.complete(REQUEST)
    assert response.retries == 1
    assert response.tool_input == ARGS
    assert len(fake.requests) == 2


@FLAVOURS
async def test_server_errors_exhaust_retries(fake: FakeLLMServer, flavour: str) -> None:
    fake.queue(*[server_error(500, flavour=flavour)] * 3)
    async with make(fake, max_retries=2) as provider:
        with pytest.raises(LLMCallError) as caught:
            await provider.complete(REQUEST)
    error = caught.value
    assert isinstance(error, MamsError)
    assert (error.retries, error.status, error.provider) == (2, 500, flavour)
    assert error.response_body is not None
    assert "internal error (fake)" in error.response_body
    assert json.loads(error.request_body) == fake.requests[-1]
    assert len(fake.requests) == 3
    assert "failed after 3 attempts: HTTP 500" in str(error)


@FLAVOURS
async def test_bad_request_is_not_retried(fake: FakeLLMServer, flavour: str) -> None:
    fake.queue(bad_request("max_tokens too large", flavour=flavour))
    async with make(fake) as provider:
        with pytest.raises(LLMCallError) as caught:
            await provider.complete(REQUEST)
    assert (caught.value.retries, caught.value.status) == (0, 400)
    assert len(fake.requests) == 1
    assert "see response_body" in str(caught.value)


async def test_auth_failure_names_the_key_variable(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(401, {"type": "error", "error": {"type": "authentication_error"}}))
    async with anthropic_provider(fake_anthropic) as provider:
        with pytest.raises(LLMCallError, match="ANTHROPIC_API_KEY"):
            await provider.complete(REQUEST)


@FLAVOURS
async def test_timeout_is_retried_then_fails(fake: FakeLLMServer, flavour: str) -> None:
    slow = Reply(200, {}, delay=5.0)  # the fake cuts delays short when it shuts down
    fake.queue(slow, slow)
    async with make(fake, timeout=0.3, max_retries=1) as provider:
        with pytest.raises(LLMCallError) as caught:
            await provider.complete(REQUEST)
    assert (caught.value.reason, caught.value.retries, caught.value.status) == (
        "timed out",
        1,
        None,
    )
    assert caught.value.response_body is None
    assert json.loads(caught.value.request_body)["model"] == fake.requests[0]["model"]
    assert len(fake.requests) == 2


async def test_timeout_then_success(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(Reply(200, {}, delay=5.0), openai_tool_call(OFFER.name, ARGS))
    async with openai_provider(fake_openai, timeout=0.3) as provider:
        response = await provider.complete(REQUEST)
    assert (response.retries, response.tool_input) == (1, ARGS)


async def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = AnthropicProvider(
        "claude-haiku-4-5",
        api_key="k",
        base_url=f"http://127.0.0.1:{port}",
        max_retries=1,
        backoff=0.001,
    )
    async with provider:
        with pytest.raises(LLMCallError, match="connection error") as caught:
            await provider.complete(REQUEST)
    assert caught.value.retries == 1
    assert "ANTHROPIC_BASE_URL" in str(caught.value)


async def test_unreadable_success_body_is_not_retried(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(Reply(200, "<html>captive portal</html>"))
    async with anthropic_provider(fake_anthropic) as provider:
        with pytest.raises(LLMCallError, match="unreadable response") as caught:
            await provider.complete(REQUEST)
    assert caught.value.response_body == "<html>captive portal</html>"
    assert len(fake_anthropic.requests) == 1


def test_backoff_honours_retry_after_and_is_jittered() -> None:
    provider = AnthropicProvider("m", api_key="k", backoff=1.0, max_backoff=4.0)
    assert provider._delay(0, 2.5) == 2.5
    assert 2.0 <= provider._delay(5, 3600.0) <= 4.0  # absurd retry-after: our own backoff
    delays = {provider._delay(1, None) for _ in range(20)}
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len(delays) > 1


def test_retry_after_headers() -> None:
    assert providers._retry_after({"retry-after": "3"}) == 3.0
    assert providers._retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert providers._retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert providers._retry_after({"retry-after": "soon"}) is None
    assert providers._retry_after({}) is None


# -- usage and cost -----------------------------------------------------------------------


async def test_anthropic_usage_cache_and_cost(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.queue(
        anthropic_tool_use(
            OFFER.name, ARGS, input_tokens=100, output_tokens=50, cache_read=1000, cache_write=200
        )
    )
    async with anthropic_provider(fake_anthropic) as provider:
        response = await provider.complete(REQUEST)
    # input_tokens counts the whole prompt, cached parts included.
    assert (response.input_tokens, response.output_tokens) == (1300, 50)
    assert (response.cache_read_tokens, response.cache_write_tokens) == (1000, 200)
    # claude-haiku-4-5: $1 in, $5 out, reads 0.1x, writes 1.25x (per million tokens)
    assert response.cost_usd == pytest.approx((100 * 1 + 1000 * 0.1 + 200 * 1.25 + 50 * 5) / 1e6)


async def test_openai_usage_cache_and_cost(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(
        openai_tool_call(
            OFFER.name, ARGS, prompt_tokens=1000, completion_tokens=100, cached_tokens=400
        )
    )
    async with openai_provider(fake_openai) as provider:
        response = await provider.complete(REQUEST)
    assert (response.input_tokens, response.output_tokens, response.cache_read_tokens) == (
        1000,
        100,
        400,
    )
    # gpt-4o: $2.50 in, $1.25 cached, $10 out
    assert response.cost_usd == pytest.approx((600 * 2.5 + 400 * 1.25 + 100 * 10) / 1e6)


async def test_unknown_model_costs_none(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_tool_call(OFFER.name, ARGS))
    provider = OpenAIProvider("llama-3.1-8b-instruct", api_key="x", base_url=fake_openai.url)
    async with provider:
        response = await provider.complete(REQUEST)
    assert response.cost_usd is None
    assert response.input_tokens == 120


def test_router_prefix_and_longest_match() -> None:
    direct = estimate_cost("gpt-5-mini", input_tokens=1_000_000, output_tokens=0)
    routed = estimate_cost("openai/gpt-5-mini-2025", input_tokens=1_000_000, output_tokens=0)
    assert direct == routed == pytest.approx(0.25)


async def test_a_deprecated_anthropic_model_still_warns(fake_anthropic: FakeAnthropic) -> None:
    """Requests skip `messages.create`, which warned of a deprecated model at each call;
    the provider warns instead, once, when it is built (and the call still works)."""
    deprecated = sorted(DEPRECATED_MODELS)[0]
    fake_anthropic.queue(anthropic_tool_use(OFFER.name, ARGS))
    with pytest.warns(DeprecationWarning, match=deprecated):
        provider = AnthropicProvider(deprecated, api_key="test-key", base_url=fake_anthropic.url)
    async with provider:
        assert (await provider.complete(REQUEST)).tool_input == ARGS


def test_default_models_are_not_deprecated() -> None:
    for model in DEFAULT_MODELS.values():
        assert model.rsplit("/", 1)[-1] not in DEPRECATED_MODELS
        assert estimate_cost(model, input_tokens=1, output_tokens=1) is not None


# -- the concurrency cap ------------------------------------------------------------------


@FLAVOURS
async def test_limiter_caps_requests_in_flight(fake: FakeLLMServer, flavour: str) -> None:
    cap, total = 3, 10
    lock = threading.Condition()
    in_flight = arrived = peak = 0

    def handler(body: dict[str, Any]) -> Reply:
        # Hold each request until `cap` are in flight at once (or every request has
        # arrived), so a missing cap would show as more than `cap` at the same time.
        nonlocal in_flight, arrived, peak
        with lock:
            in_flight += 1
            arrived += 1
            peak = max(peak, in_flight)
            lock.notify_all()
            lock.wait_for(lambda: in_flight >= cap or arrived >= total, timeout=5)
            in_flight -= 1
        return good_reply(flavour)

    fake.handler = handler
    async with make(fake, limiter=anyio.CapacityLimiter(cap)) as provider:
        results = []

        async def call() -> None:
            results.append(await provider.complete(REQUEST))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(total):
                    tg.start_soon(call)
    assert peak == cap
    assert len(results) == total
    assert all(r.tool_input == ARGS for r in results)


# -- configuration from the environment ---------------------------------------------------


def test_provider_for_anthropic() -> None:
    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
    provider = provider_for("anthropic:claude-haiku-4-5", env)
    assert isinstance(provider, AnthropicProvider)
    assert (provider.name, provider.model) == ("anthropic", "claude-haiku-4-5")
    assert provider.base_url.startswith("http://127.0.0.1:9")
    bare = provider_for("anthropic", {"ANTHROPIC_API_KEY": "sk-test"})
    assert bare.model == DEFAULT_MODELS["anthropic"]
    assert isinstance(bare, AnthropicProvider)
    assert bare.base_url.startswith("https://api.anthropic.com")


def test_provider_for_openai_modes() -> None:
    keyed = provider_for("openai:gpt-5.5", {"OPENAI_API_KEY": "sk"})
    assert isinstance(keyed, OpenAIProvider)
    assert (keyed.structured, keyed.token_param) == ("tools", "max_completion_tokens")
    local = provider_for(
        "openai:qwen3",
        {"OPENAI_BASE_URL": "http://localhost:8000/v1", "MAMS_OPENAI_STRUCTURED": "json_schema"},
    )
    assert isinstance(local, OpenAIProvider)
    assert (local.structured, local.token_param) == ("json_schema", "max_tokens")
    assert local.base_url.startswith("http://localhost:8000/v1")


def test_provider_for_openrouter() -> None:
    routed = provider_for("openrouter:meta-llama/llama-3.3-70b", {"OPENROUTER_API_KEY": "or"})
    assert isinstance(routed, OpenAIProvider)
    assert (routed.name, routed.model) == ("openrouter", "meta-llama/llama-3.3-70b")
    assert routed.base_url.startswith("https://openrouter.ai/api/v1")
    moved = provider_for(
        "openrouter", {"OPENROUTER_API_KEY": "or", "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"}
    )
    assert isinstance(moved, OpenAIProvider)
    assert moved.base_url.startswith("http://127.0.0.1:9/v1")
    assert moved.model == DEFAULT_MODELS["openrouter"]


@pytest.mark.parametrize(
    ("spec", "env", "names"),
    [
        ("anthropic:claude-haiku-4-5", {"OPENAI_API_KEY": "sk"}, ["ANTHROPIC_API_KEY"]),
        ("openai:gpt-5.5", {"ANTHROPIC_API_KEY": "sk"}, ["OPENAI_API_KEY", "OPENAI_BASE_URL"]),
        ("openrouter:x/y", {"OPENAI_API_KEY": "sk"}, ["OPENROUTER_API_KEY"]),
        ("anthropic:m", {"ANTHROPIC_API_KEY": "  "}, ["ANTHROPIC_API_KEY"]),
    ],
)
def test_provider_for_missing_key(spec: str, env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ProviderConfigError) as caught:
        provider_for(spec, env)
    assert isinstance(caught.value, MamsError)
    assert caught.value.env_var == names[0]
    for name in names:
        assert f"{name}=" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "env", "needle"),
    [
        ("mistral:large", {}, "unknown LLM provider 'mistral'"),
        ("openai:m", {"OPENAI_API_KEY": "k", "MAMS_OPENAI_STRUCTURED": "xml"}, "json_schema"),
        ("anthropic:m", {"ANTHROPIC_API_KEY": "k", "MAMS_LLM_CONCURRENCY": "0"}, ">= 1"),
        ("anthropic:m", {"ANTHROPIC_API_KEY": "k", "MAMS_LLM_CONCURRENCY": "lots"}, ">= 1"),
    ],
)
def test_provider_for_bad_config(spec: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ProviderConfigError, match=needle):
        provider_for(spec, env)


def test_one_limiter_per_provider_name() -> None:
    env = {
        "ANTHROPIC_API_KEY": "a",
        "OPENAI_API_KEY": "o",
        "OPENROUTER_API_KEY": "r",
        "MAMS_LLM_CONCURRENCY": "5",
    }
    first = provider_for("anthropic:claude-haiku-4-5", env)
    second = provider_for("anthropic:claude-sonnet-5", env)
    openai = provider_for("openai:gpt-4o", env)
    routed = provider_for("openrouter:openai/gpt-4o", env)
    assert isinstance(first, AnthropicProvider)
    assert isinstance(second, AnthropicProvider)
    assert isinstance(openai, OpenAIProvider)
    assert isinstance(routed, OpenAIProvider)
    assert first.limiter is second.limiter
    assert first.limiter.total_tokens == 5
    assert openai.limiter is not routed.limiter
    assert openai.limiter is not first.limiter


def test_default_concurrency_is_eight() -> None:
    provider = provider_for("openai:gpt-4o", {"OPENAI_API_KEY": "k"})
    assert isinstance(provider, OpenAIProvider)
    assert provider.limiter.total_tokens == 8


async def test_provider_for_reaches_a_local_server_without_key(fake_openai: FakeOpenAI) -> None:
    fake_openai.queue(openai_tool_call(OFFER.name, ARGS))
    provider = provider_for("openai:local-model", {"OPENAI_BASE_URL": fake_openai.url})
    assert isinstance(provider, OpenAIProvider)
    async with provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input == ARGS
    assert fake_openai.headers[0]["authorization"] == "Bearer not-needed"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OPENAI_BASE_URL": "http://localhost:11434/v1"}, "openai"),
        ({"OPENAI_API_KEY": "o", "OPENROUTER_API_KEY": "r"}, "openrouter"),
        ({"OPENAI_API_KEY": "o", "OPENROUTER_API_KEY": "r", "ANTHROPIC_API_KEY": "a"}, "anthropic"),
        ({"ANTHROPIC_API_KEY": ""}, None),
    ],
)
def test_available_llm(env: dict[str, str], expected: str | None) -> None:
    assert available_llm(env) == expected


# -- the fakes themselves -----------------------------------------------------------------


async def test_fake_without_reply_fails_loudly(fake_anthropic: FakeAnthropic) -> None:
    async with anthropic_provider(fake_anthropic, max_retries=0) as provider:
        with pytest.raises(LLMCallError) as caught:
            await provider.complete(REQUEST)
    assert "no reply queued" in (caught.value.response_body or "")


async def test_fake_handler_scripts_a_conversation(fake_anthropic: FakeAnthropic) -> None:
    def negotiator(body: dict[str, Any]) -> Reply:
        turns = len(body["messages"])
        return anthropic_tool_use(OFFER.name, {"price": 100 - turns, "message": f"turn {turns}"})

    fake_anthropic.handler = negotiator
    async with anthropic_provider(fake_anthropic) as provider:
        response = await provider.complete(REQUEST)
    assert response.tool_input == {"price": 97, "message": "turn 3"}
