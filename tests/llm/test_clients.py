"""What the system around the model costs: shared SDK clients, SDKs imported only when
used, and responses that are not shaped like the API's read as unreadable, not as a crash.

Through the real SDKs against the loopback fakes (tests/llm/fakes.py), and real child
interpreters for what a process imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mams.actors.brains.llm import providers
from mams.actors.brains.llm.providers import (
    AnthropicProvider,
    ChatMessage,
    LLMCallError,
    LLMRequest,
    OpenAIProvider,
    ToolSpec,
    provider_for,
)
from tests.llm.fakes import (
    FakeAnthropic,
    FakeLLMServer,
    FakeOpenAI,
    Reply,
    anthropic_tool_use,
    openai_tool_call,
)

ROOT = Path(__file__).resolve().parents[2]
OFFER = ToolSpec(
    name="make_offer",
    description="Propose a price.",
    parameters={"type": "object", "properties": {"price": {"type": "number"}}},
)
REQUEST = LLMRequest(system="You are a buyer.", messages=(ChatMessage("user", "Hi"),), tool=OFFER)
ARGS = {"price": 90}


@pytest.fixture(autouse=True)
def fresh_limiters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "_LIMITERS", {})


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        fake.handler = lambda _body: anthropic_tool_use(OFFER.name, ARGS)
        yield fake


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        fake.handler = lambda _body: openai_tool_call(OFFER.name, ARGS)
        yield fake


def env_for(anthropic: FakeLLMServer, openai: FakeLLMServer) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "key-a",
        "ANTHROPIC_BASE_URL": anthropic.url,
        "OPENAI_API_KEY": "key-o",
        "OPENAI_BASE_URL": openai.url,
    }


def built(spec: str, env: dict[str, str]) -> AnthropicProvider | OpenAIProvider:
    provider = provider_for(spec, env)
    assert isinstance(provider, AnthropicProvider | OpenAIProvider)
    return provider


def sdk_client(provider: object) -> Any:
    assert isinstance(provider, AnthropicProvider | OpenAIProvider)
    return provider._client


async def test_providers_of_one_endpoint_share_one_client_until_the_last_closes(
    fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    env = env_for(fake_anthropic, fake_openai)
    # Five agents on Claude, two on the OpenAI-compatible server, one with another key.
    claude = [built("anthropic:claude-sonnet-5", env) for _ in range(5)]
    gpt = [built("openai:gpt-5.5", env) for _ in range(2)]
    other_key = built("anthropic:claude-sonnet-5", {**env, "ANTHROPIC_API_KEY": "key-b"})
    shared = sdk_client(claude[0])
    assert all(sdk_client(p) is shared for p in claude)
    assert sdk_client(gpt[0]) is sdk_client(gpt[1])
    assert sdk_client(gpt[0]) is not shared
    assert sdk_client(other_key) is not shared
    for provider in [*claude, *gpt, other_key]:
        assert (await provider.complete(REQUEST)).tool_input == ARGS
    # Each request carried its own provider's key.
    keys = [h["authorization"] for h in fake_anthropic.headers]
    assert keys == ["Bearer key-a"] * 5 + ["Bearer key-b"]
    assert {h["authorization"] for h in fake_openai.headers} == {"Bearer key-o"}

    # Closing a brain lets go of the client; the others go on using it.
    for provider in claude[:4]:
        await provider.aclose()
        await provider.aclose()  # twice is harmless, and does not count twice
    assert not shared.is_closed()
    assert (await claude[4].complete(REQUEST)).tool_input == ARGS
    await claude[4].aclose()
    assert shared.is_closed()
    # A brain built afterwards gets a client of its own, open.
    async with built("anthropic:claude-sonnet-5", env) as again:
        assert sdk_client(again) is not shared
        assert (await again.complete(REQUEST)).tool_input == ARGS
    for provider in [*gpt, other_key]:
        await provider.aclose()
    assert sdk_client(gpt[0]).is_closed()
    assert sdk_client(other_key).is_closed()


def test_each_event_loop_has_its_own_shared_client(
    fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    """A client's pooled connections belong to the loop that opened them: a second
    `anyio.run` must not reuse a client a first one left open."""
    env = env_for(fake_anthropic, fake_openai)
    clients: list[Any] = []

    async def one_loop() -> None:
        a = built("anthropic:claude-sonnet-5", env)
        b = built("anthropic:claude-sonnet-5", env)
        assert sdk_client(a) is sdk_client(b)
        assert (await a.complete(REQUEST)).tool_input == ARGS
        assert (await b.complete(REQUEST)).tool_input == ARGS
        clients.append(sdk_client(a))  # left open, as a careless caller would

    anyio.run(one_loop)
    anyio.run(one_loop)
    assert clients[0] is not clients[1]
    assert len(fake_anthropic.requests) == 4
    # Built outside any loop, a provider cannot know which loop will use it: its own.
    a, b = built("anthropic:claude-sonnet-5", env), built("anthropic:claude-sonnet-5", env)
    assert sdk_client(a) is not sdk_client(b)


def run_python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; it prints one JSON object, returned here."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**child_env, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


LOADED = "{m: m in sys.modules for m in ('anthropic', 'openai')}"
SDKS = f"json.dumps({LOADED})"


def test_a_process_imports_only_the_sdk_its_brains_use() -> None:
    code = f"""
import json, sys
import mams.cli
from mams.actors.brains.llm import providers
print({SDKS})
"""
    assert run_python(code) == {"anthropic": False, "openai": False}
    code = f"""
import json, sys
from mams.actors.market import make_buyer_brain, make_seller_brain
make_seller_brain("openai:gpt-5.5")
make_buyer_brain("openai:gpt-5.5")
print({SDKS})
"""
    local = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert run_python(code, local) == {"anthropic": False, "openai": True}
    code = f"""
import json, sys
from mams.actors.market import make_seller_brain
make_seller_brain("anthropic:claude-sonnet-5")
print({SDKS})
"""
    assert run_python(code, {"ANTHROPIC_API_KEY": "k"}) == {"anthropic": True, "openai": False}


def test_an_sdk_is_imported_with_the_garbage_collector_paused() -> None:
    """Importing an SDK and making its client build thousands of classes; the collections
    their allocations would trigger free nothing, so none runs meanwhile (but the odd
    youngest-generation one around them), and the collector is back on (or left off, if it
    was) once the provider is built."""
    code = """
import gc, json
from mams.actors.brains.llm.providers import AnthropicProvider, OpenAIProvider
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info))
AnthropicProvider("claude-sonnet-5", api_key="k", base_url="http://127.0.0.1:9")
OpenAIProvider("gpt-5.5", api_key="k", base_url="http://127.0.0.1:9/v1")
during = sum(1 for info in collections if info["generation"] > 0)
enabled = gc.isenabled()
gc.disable()
AnthropicProvider("claude-sonnet-5", api_key="k", base_url="http://127.0.0.1:9")
print(json.dumps({"during": during, "enabled": enabled, "left_off": not gc.isenabled()}))
"""
    assert run_python(code) == {"during": 0, "enabled": True, "left_off": True}


def test_checking_a_runs_models_builds_nothing() -> None:
    """`mams run` checks every provider before it starts anything, and builds the brains
    once, where they run: the check imports no SDK (with --processes the parent never
    needs one), yet still names what is missing."""
    code = f"""
import json, sys
from pathlib import Path
from mams.actors.market import RunOptions, check_brains
from mams.domain.config import load_scenario
from mams.domain.errors import ConfigError
scenario = load_scenario(Path("examples/phone-accessories.toml"))
items = scenario.buyer.items
check_brains(scenario, items, RunOptions(buyer_model="anthropic:x", seller_model="openai:y"))
try:
    check_brains(scenario, items, RunOptions(buyer_model="openrouter:z"))
    missing = None
except ConfigError as exc:
    missing = str(exc)
print(json.dumps({{**{LOADED}, "missing": missing}}))
"""
    env = {"ANTHROPIC_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    result = run_python(code, env)
    assert result["anthropic"] is False
    assert result["openai"] is False
    assert "OPENROUTER_API_KEY" in result["missing"]


@pytest.mark.parametrize(
    "body",
    [
        {"content": "not a list of blocks"},
        {"content": [{"type": "tool_use", "name": 5, "input": {}}]},
        {"content": [], "usage": {"input_tokens": "many"}},
        ["not", "an", "object"],
    ],
)
async def test_anthropic_body_not_shaped_like_a_message_is_unreadable(
    fake_anthropic: FakeAnthropic, body: Any
) -> None:
    fake_anthropic.queue(Reply(200, json.dumps(body)))
    async with AnthropicProvider("claude-x", api_key="k", base_url=fake_anthropic.url) as p:
        with pytest.raises(LLMCallError, match="unreadable response") as caught:
            await p.complete(REQUEST)
    assert caught.value.retries == 0
    assert caught.value.status == 200
    assert len(fake_anthropic.requests) == 1  # not retried


@pytest.mark.parametrize(
    "body",
    [
        {"choices": "none"},
        {"choices": [{"message": {"content": 5}}]},
        {"choices": [{"message": {"tool_calls": [{"function": {"arguments": {"p": 1}}}]}}]},
        {"choices": [], "usage": {"prompt_tokens": None}},
    ],
)
async def test_openai_body_not_shaped_like_a_completion_is_unreadable(
    fake_openai: FakeOpenAI, body: Any
) -> None:
    fake_openai.queue(Reply(200, json.dumps(body)))
    async with OpenAIProvider("gpt-x", api_key="k", base_url=fake_openai.url) as p:
        with pytest.raises(LLMCallError, match="unreadable response") as caught:
            await p.complete(REQUEST)
    assert caught.value.retries == 0
    assert caught.value.status == 200
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    ("var", "spec", "value"),
    [
        ("OPENAI_BASE_URL", "openai:gpt-5.5", "localhost:8000/v1"),
        ("OPENAI_BASE_URL", "openai:gpt-5.5", "http://127.0.0.1:99999/v1"),
        ("ANTHROPIC_BASE_URL", "anthropic:claude-sonnet-5", "http://[::1"),
        ("OPENROUTER_BASE_URL", "openrouter:x/y", "ftp://user:secret@example.com"),
    ],
)
def test_a_base_url_that_is_no_http_url_fails_the_check(var: str, spec: str, value: str) -> None:
    """A base URL no client could use is a configuration error naming the variable (not
    a failure of every call, or an httpx error), also for the check before a run, which
    builds no client; credentials in it are never echoed."""
    env = {"ANTHROPIC_API_KEY": "k", "OPENROUTER_API_KEY": "k", "OPENAI_API_KEY": "k", var: value}
    for build in (provider_for, providers.check_provider):
        with pytest.raises(providers.ProviderConfigError, match=var) as caught:
            build(spec, env)
        assert caught.value.env_var == var
        assert "secret" not in str(caught.value)
