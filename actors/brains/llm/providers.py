"""LLM providers: one forced-tool call to Anthropic or any OpenAI-compatible server.

A `Provider` turns an `LLMRequest` (system prompt, messages, the one tool the model must
call) into an `LLMResponse` that records everything about the call: the exact request and
response bodies, tokens (cache hits included), latency, retries and an estimated cost.

Retries are ours, not the SDKs' (the clients are built with `max_retries=0`), so they can
be counted and recorded: 408/409/429/5xx, timeouts and connection errors are retried with
jittered exponential backoff, honouring `retry-after` / `retry-after-ms`. Anything else,
or running out of attempts, raises `LLMCallError` carrying what happened; the caller
records it and falls back. Each provider name has one `anyio.CapacityLimiter` per process
(`MAMS_LLM_CONCURRENCY`, default 8) capping requests in flight.

`provider_for("anthropic:claude-...")` builds a provider from environment variables.

Cost, since every call pays it: an SDK is imported only when a provider of its kind is
built (`import anthropic` alone is over a second of CPU), with the garbage collector
paused meanwhile (a tenth of that CPU was collections freeing nothing); providers of one
process share one SDK client per (SDK, base URL, key, timeout, event loop), so its TLS context
(certificate bundle) and connection pool are built once, not once per agent; and both
wire formats' responses are read by msgspec into the few fields we use rather than into
the SDKs' pydantic models. Requests go through the SDK client's own `post` (its auth,
headers, timeouts and error classes) with the body already encoded by msgspec as
`content`: `chat.completions.create` walks every value of the body through its
type-directed transform (1-3 ms a call with a tool schema), `messages.create` opens a
tracing span and both copy the body value by value and encode it with `json`, none of
which changes anything in ours. The Anthropic SDK's `DeprecationWarning` for a deprecated
model is given once, when its provider is built; the SDK's OpenTelemetry call spans are
not emitted (MAMS configures no tracing).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import json
import os
import random
import time
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, Self

import anyio
import msgspec
import structlog

from mams.actors.brains.llm.models import DEFAULT_MODELS, available_llm
from mams.actors.brains.llm.pricing import estimate_cost
from mams.domain.errors import ConfigError, MamsError

if TYPE_CHECKING:  # the SDKs are imported when a provider of theirs is built
    import anthropic
    import openai

__all__ = [
    "DEFAULT_MODELS",
    "AnthropicProvider",
    "ChatMessage",
    "LLMCallError",
    "LLMRequest",
    "LLMResponse",
    "OpenAIProvider",
    "Provider",
    "ProviderConfigError",
    "ToolSpec",
    "available_llm",
    "check_provider",
    "provider_for",
]

log = structlog.get_logger("mams.llm")

# The one place to change default models. Never a model listed in the anthropic SDK's
# anthropic/_data/deprecated_models.py (tests check this).

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
_OPENAI_BASE_URL = "https://api.openai.com/v1"
_KEY_ENV = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
_RETRY_STATUSES = frozenset({408, 409, 429})
_MAX_RETRY_AFTER = 60.0  # seconds; a longer retry-after falls back to our own backoff


class ChatMessage(msgspec.Struct, frozen=True):
    """One turn of the conversation (the system prompt travels separately)."""

    role: Literal["user", "assistant"]
    content: str


class ToolSpec(msgspec.Struct, frozen=True):
    """The tool the model is forced to call; `parameters` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any]


class LLMRequest(msgspec.Struct, frozen=True):
    """What to ask: a stable system prompt (cached where the provider can), the
    conversation, and the one tool whose arguments are the structured answer."""

    system: str
    messages: tuple[ChatMessage, ...]
    tool: ToolSpec
    max_tokens: int = 1024
    # Sent to OpenAI-compatible servers only; Anthropic's API no longer accepts it.
    temperature: float | None = None


class LLMResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Everything about one completed call, ready to be recorded.

    `input_tokens` counts the whole prompt, cached parts included, for every provider
    (Anthropic reports cache reads/writes apart from `input_tokens`; we add them back), so
    `cache_read_tokens <= input_tokens` always holds. `cost_usd` is an estimate (see
    `pricing`), None for a model without a known price.
    """

    provider: str
    model: str
    tool_input: dict[str, Any] | None
    text: str
    request_body: str
    response_body: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float
    retries: int
    cost_usd: float | None


class LLMCallError(MamsError):
    """A call failed for good (not retryable, or out of retries). Carries what happened:
    the last request body sent and, when the server answered, its status and body."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        reason: str,
        retries: int,
        request_body: str,
        response_body: str | None = None,
        status: int | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.reason = reason
        self.retries = retries
        self.request_body = request_body
        self.response_body = response_body
        self.status = status
        attempts = f"{retries + 1} attempt{'s' if retries else ''}"
        super().__init__(
            f"{provider} call to model {model!r} failed after {attempts}: {reason}. "
            f"{_hint(provider, model, status)}"
        )


class ProviderConfigError(ConfigError):
    """A provider cannot be built from the configuration (bad spec, missing env var)."""

    def __init__(self, message: str, *, provider: str | None = None, env_var: str | None = None):
        self.provider = provider
        self.env_var = env_var
        super().__init__(message)


def _hint(provider: str, model: str, status: int | None) -> str:
    key = _KEY_ENV.get(provider, "the provider's API key variable")
    base = f"{provider.upper()}_BASE_URL"
    if status in (401, 403):
        return f"Check that {key} holds a valid key for this endpoint."
    if status == 404:
        return f"Check the model name {model!r} and {base}."
    if status == 429:
        return "Rate limited: lower MAMS_LLM_CONCURRENCY or wait before running again."
    if status is not None and status >= 500:
        return "The provider is failing; retry later or choose another provider/model."
    if status is not None and status < 400:
        return (
            "The answer was not a valid response; see response_body "
            "(does the base URL point at the right kind of server?)."
        )
    if status is not None:
        return "The server rejected the request; see response_body for its explanation."
    return f"Check the network and {base} (is the server up?), or raise the timeout."


class Provider(Protocol):
    """Anything that can answer an `LLMRequest` (real providers, test doubles)."""

    name: str
    model: str

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Make the call (with retries); raise `LLMCallError` if it fails for good."""
        ...


class _Exchange(msgspec.Struct):
    """One successful HTTP exchange, parsed."""

    request_body: str
    response_body: str
    tool_input: dict[str, Any] | None
    text: str
    input_tokens: int
    output_tokens: int
    cache_read: int = 0
    cache_write: int = 0


class _Failure(msgspec.Struct):
    reason: str
    retryable: bool
    request_body: str
    response_body: str | None = None
    status: int | None = None
    retry_after: float | None = None


class _SdkErrors(NamedTuple):
    """One SDK's exception classes (both SDKs name and shape them alike)."""

    api: type[Exception]
    status: type[Exception]
    timeout: type[Exception]
    connection: type[Exception]


def _body_of(request: Any) -> str:
    try:
        return bytes(request.content).decode("utf-8", "replace")
    except Exception:  # a streaming body cannot be read back; record that instead
        return "<request body unavailable>"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait, from retry-after-ms or retry-after."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        if (value := headers.get("retry-after")) is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _failure(exc: Exception, errors: _SdkErrors) -> _Failure | None:
    """Translate an SDK error into a `_Failure`; None for errors that are not the API's."""
    if not isinstance(exc, errors.api):
        return None
    sdk_exc: Any = exc  # status_code, request and response are on every SDK error class
    if isinstance(exc, errors.status):
        status: int = sdk_exc.status_code
        try:
            body: str | None = sdk_exc.response.text
        except Exception:
            body = None
        return _Failure(
            reason=f"HTTP {status}",
            retryable=status in _RETRY_STATUSES or status >= 500,
            request_body=_body_of(sdk_exc.request),
            response_body=body,
            status=status,
            retry_after=_retry_after(sdk_exc.response.headers),
        )
    if isinstance(exc, errors.timeout):
        return _Failure("timed out", True, _body_of(sdk_exc.request))
    if isinstance(exc, errors.connection):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return _Failure(f"connection error{detail}", True, _body_of(sdk_exc.request))
    # Another API error, e.g. a response the SDK could not validate: not retried.
    return _Failure(f"{type(exc).__name__}: {exc}", False, _body_of(sdk_exc.request))


def _parse_json_object(raw: str) -> dict[str, Any] | None:
    """`raw` as a JSON object, tolerating a ```json fence (local models like them)."""
    text = raw.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (back as it was after): importing an
    SDK builds thousands of pydantic classes, whose allocations trigger collections that
    scan them again and again and free nothing (a tenth of `import anthropic`'s CPU)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# -- shared SDK clients ------------------------------------------------------------------


class _Shared(NamedTuple):
    client: Any
    loop: weakref.ref[asyncio.AbstractEventLoop]
    users: int


_CLIENTS: dict[tuple[object, ...], _Shared] = {}


def _shared_client(
    key: tuple[object, ...], make: Callable[[], Any]
) -> tuple[Any, tuple[object, ...] | None]:
    """The SDK client for `key` in the running event loop, made by `make()` on first use,
    and the handle to give back to `_release_client` when done with it.

    A client's connection pool belongs to the event loop that opened its connections, so
    each loop gets its own, and a client whose loop is gone is never reused. Outside any
    event loop (a synchronous caller) the client is not shared: handle None. A client is
    made with the garbage collector paused (its first one imports the HTTP stack)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with _gc_paused():
            return make(), None
    handle = (*key, id(loop))
    shared = _CLIENTS.get(handle)
    if shared is None or shared.loop() is not loop:  # new, or an old loop's under its id
        with _gc_paused():
            shared = _Shared(make(), weakref.ref(loop), 0)
    _CLIENTS[handle] = shared._replace(users=shared.users + 1)
    return shared.client, handle


async def _release_client(handle: tuple[object, ...] | None, client: Any) -> None:
    """One user fewer of a client; the last one closes it."""
    # Not shared (handle None), or its entry was replaced: the client is ours alone.
    if handle is not None and (shared := _CLIENTS.get(handle)) and shared.client is client:
        if shared.users > 1:
            _CLIENTS[handle] = shared._replace(users=shared.users - 1)
            return
        del _CLIENTS[handle]
    await client.close()


class _RetryingProvider:
    """The retry / limit / record loop shared by both wire formats."""

    name: str
    model: str
    _errors: _SdkErrors
    _client: Any
    _client_handle: tuple[object, ...] | None = None
    _released = False

    def __init__(
        self,
        model: str,
        *,
        name: str,
        max_retries: int,
        limiter: anyio.CapacityLimiter | None,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.name = name
        self.model = model
        self.max_retries = max_retries
        self.limiter = limiter if limiter is not None else anyio.CapacityLimiter(8)
        self.backoff = backoff
        self.max_backoff = max_backoff

    async def _send(self, request: LLMRequest) -> _Exchange:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Let go of the HTTP client (closed when no provider of this process uses it)."""
        if not self._released:
            self._released = True
            await _release_client(self._client_handle, self._client)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after <= _MAX_RETRY_AFTER:
            return retry_after
        ceiling = min(self.max_backoff, self.backoff * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Call the model, retrying transient failures; raise `LLMCallError` for good."""
        attempt = 0
        while True:
            try:
                async with self.limiter:
                    started = time.perf_counter()
                    exchange = await self._send(request)
                    latency_ms = (time.perf_counter() - started) * 1000
            except _BadResponseError as exc:
                failure = exc.failure
            except Exception as exc:
                if (sdk_failure := _failure(exc, self._errors)) is None:
                    raise
                failure = sdk_failure
            else:
                return self._response(exchange, latency_ms, attempt)
            if not failure.retryable or attempt >= self.max_retries:
                log.warning(
                    "llm.failed",
                    provider=self.name,
                    model=self.model,
                    reason=failure.reason,
                    status=failure.status,
                    retries=attempt,
                )
                raise LLMCallError(
                    provider=self.name,
                    model=self.model,
                    reason=failure.reason,
                    retries=attempt,
                    request_body=failure.request_body,
                    response_body=failure.response_body,
                    status=failure.status,
                )
            delay = self._delay(attempt, failure.retry_after)
            log.info(
                "llm.retry",
                provider=self.name,
                model=self.model,
                reason=failure.reason,
                attempt=attempt + 1,
                delay_s=round(delay, 3),
            )
            await anyio.sleep(delay)
            attempt += 1

    def _response(self, ex: _Exchange, latency_ms: float, retries: int) -> LLMResponse:
        return LLMResponse(
            provider=self.name,
            model=self.model,
            tool_input=ex.tool_input,
            text=ex.text,
            request_body=ex.request_body,
            response_body=ex.response_body,
            input_tokens=ex.input_tokens,
            output_tokens=ex.output_tokens,
            cache_read_tokens=ex.cache_read,
            cache_write_tokens=ex.cache_write,
            latency_ms=latency_ms,
            retries=retries,
            cost_usd=estimate_cost(
                self.model,
                input_tokens=ex.input_tokens,
                output_tokens=ex.output_tokens,
                cache_read_tokens=ex.cache_read,
                cache_write_tokens=ex.cache_write,
            ),
        )


class _BadResponseError(Exception):
    """A 2xx whose body could not be understood; not retried."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _unreadable(
    exc: Exception, request_body: str, response_body: str, status: int
) -> _BadResponseError:
    reason = f"unreadable response ({type(exc).__name__}: {exc})"
    return _BadResponseError(_Failure(reason, False, request_body, response_body, status))


# What we read of a response, and nothing else: unknown fields are skipped, a missing
# optional one is None, a field of the wrong type makes the response unreadable.


class _AnthropicBlock(msgspec.Struct):
    type: str
    text: str | None = None
    name: str | None = None
    input: Any = None


class _AnthropicUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _AnthropicMessage(msgspec.Struct):
    content: list[_AnthropicBlock]
    usage: _AnthropicUsage | None = None


class _OpenAIFunction(msgspec.Struct):
    name: str | None = None
    arguments: str = ""


class _OpenAIToolCall(msgspec.Struct):
    type: str | None = None
    function: _OpenAIFunction | None = None


class _OpenAIMessage(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[_OpenAIToolCall] | None = None


class _OpenAIChoice(msgspec.Struct):
    message: _OpenAIMessage


class _OpenAITokenDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _OpenAITokenDetails | None = None


class _ChatCompletion(msgspec.Struct):
    choices: list[_OpenAIChoice]
    usage: _OpenAIUsage | None = None


_JSON = msgspec.json.Encoder()
_ANTHROPIC_DECODER = msgspec.json.Decoder(_AnthropicMessage)
_OPENAI_DECODER = msgspec.json.Decoder(_ChatCompletion)


class AnthropicProvider(_RetryingProvider):
    """Claude through the Messages API, the tool forced with `tool_choice`, and the system
    prompt sent as one block marked `cache_control: ephemeral` so repeated calls with the
    same system prompt (and tool, which precedes it in the cache prefix) hit the cache.

    `LLMRequest.temperature` is ignored: the current Messages API refuses sampling
    parameters."""

    _client: anthropic.AsyncAnthropic

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        limiter: anyio.CapacityLimiter | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        name: str = "anthropic",
    ) -> None:
        super().__init__(
            model,
            name=name,
            max_retries=max_retries,
            limiter=limiter,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        with _gc_paused():  # here: a process without an Anthropic brain never loads the SDK
            import anthropic
            import httpx2  # the SDK's HTTP library, already loaded with it
            from anthropic._data import DEPRECATED_MODELS

        if model in DEPRECATED_MODELS:  # what messages.create would warn at each call
            warnings.warn(
                f"The model {model!r} is deprecated and will reach end-of-life on "
                f"{DEPRECATED_MODELS[model]}. Please migrate to a newer model: see "
                "https://docs.anthropic.com/en/docs/resources/model-deprecations",
                DeprecationWarning,
                stacklevel=2,
            )
        self._errors = _SdkErrors(
            anthropic.APIError,
            anthropic.APIStatusError,
            anthropic.APITimeoutError,
            anthropic.APIConnectionError,
        )
        self._raw_response = httpx2.Response
        # An explicit base URL: the SDK would otherwise read ANTHROPIC_BASE_URL from the
        # process environment behind provider_for's back.
        url = base_url or _ANTHROPIC_BASE_URL
        self._client, self._client_handle = _shared_client(
            ("anthropic", url, api_key, timeout),
            lambda: anthropic.AsyncAnthropic(
                api_key=api_key, base_url=url, timeout=timeout, max_retries=0
            ),
        )
        self.base_url = str(self._client.base_url)

    def params(self, request: LLMRequest) -> dict[str, Any]:
        """The Messages API parameters for `request` (what gets JSON-encoded and sent)."""
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "tools": [
                {
                    "name": request.tool.name,
                    "description": request.tool.description,
                    "input_schema": request.tool.parameters,
                }
            ],
            "tool_choice": {"type": "tool", "name": request.tool.name},
        }
        if request.system:  # the API refuses an empty text block
            params["system"] = [
                {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}
            ]
        # No temperature: API version 2026-10-21 (what SDK 2.x sends) answers 400 to any
        # sampling parameter, even temperature 1.0; the SDK no longer accepts them either.
        return params

    async def _send(self, request: LLMRequest) -> _Exchange:
        # The client's own `post`, the body encoded by us (see the module docstring); the
        # SDK still adds auth and its headers, and raises its errors for a failed status.
        raw = await self._client.post(
            "/v1/messages", content=_JSON.encode(self.params(request)), cast_to=self._raw_response
        )
        request_body = _body_of(raw.request)
        response_body: str = raw.text
        try:
            message = _ANTHROPIC_DECODER.decode(response_body)
        except msgspec.DecodeError as exc:  # not JSON, or not shaped like a message
            raise _unreadable(exc, request_body, response_body, raw.status_code) from exc
        texts: list[str] = []
        tool_input: dict[str, Any] | None = None
        for block in message.content:
            if block.type == "text" and block.text:
                texts.append(block.text)
            elif block.type == "tool_use" and block.name == request.tool.name:
                args: object = block.input
                if isinstance(args, dict):
                    tool_input = args
                else:
                    texts.append(json.dumps(args))
        usage = message.usage or _AnthropicUsage()
        cache_read = usage.cache_read_input_tokens or 0
        cache_write = usage.cache_creation_input_tokens or 0
        return _Exchange(
            request_body=request_body,
            response_body=response_body,
            tool_input=tool_input,
            text="\n".join(t for t in texts if t),
            input_tokens=usage.input_tokens + cache_read + cache_write,
            output_tokens=usage.output_tokens,
            cache_read=cache_read,
            cache_write=cache_write,
        )


class OpenAIProvider(_RetryingProvider):
    """OpenAI's Chat Completions API, or any server speaking it (vLLM, Ollama, llama.cpp,
    LM Studio, OpenRouter). `structured="tools"` forces a function call;
    `structured="json_schema"` asks for JSON content matching the tool's schema instead,
    for servers that support constrained decoding but not tools.

    `token_param` names the output-token limit: OpenAI's own API wants
    `max_completion_tokens` (its reasoning models refuse `max_tokens`), while compatible
    servers mostly know only `max_tokens`; by default it is chosen by whether `base_url`
    is given.
    """

    _client: openai.AsyncOpenAI

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str = "openai",
        structured: Literal["tools", "json_schema"] = "tools",
        timeout: float = 60.0,
        max_retries: int = 3,
        limiter: anyio.CapacityLimiter | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        token_param: Literal["max_tokens", "max_completion_tokens"] | None = None,
    ) -> None:
        super().__init__(
            model,
            name=name,
            max_retries=max_retries,
            limiter=limiter,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self.structured = structured
        self.token_param = token_param or (
            "max_completion_tokens" if base_url is None else "max_tokens"
        )
        with _gc_paused():  # here: a process without an OpenAI brain never loads the SDK
            import httpx2  # the SDK's HTTP library, already loaded with it
            import openai

        self._errors = _SdkErrors(
            openai.APIError,
            openai.APIStatusError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        self._raw_response = httpx2.Response
        url = base_url or _OPENAI_BASE_URL
        self._client, self._client_handle = _shared_client(
            ("openai", url, api_key, timeout),
            lambda: openai.AsyncOpenAI(
                api_key=api_key, base_url=url, timeout=timeout, max_retries=0
            ),
        )
        self.base_url = str(self._client.base_url)

    def params(self, request: LLMRequest) -> dict[str, Any]:
        """The Chat Completions parameters for `request` (what gets JSON-encoded and sent)."""
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        tool = request.tool
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            self.token_param: request.max_tokens,
        }
        if self.structured == "tools":
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
            ]
            params["tool_choice"] = {"type": "function", "function": {"name": tool.name}}
        else:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": tool.name,
                    "description": tool.description,
                    "schema": tool.parameters,
                },
            }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    async def _send(self, request: LLMRequest) -> _Exchange:
        # The client's own `post`, the body encoded by us (see the module docstring); the
        # SDK still adds auth and its headers, and raises its errors for a failed status.
        raw = await self._client.post(
            "/chat/completions",
            content=_JSON.encode(self.params(request)),
            cast_to=self._raw_response,
            options={"security": {"bearer_auth": True}},
        )
        request_body = _body_of(raw.request)
        response_body: str = raw.text
        try:
            completion = _OPENAI_DECODER.decode(response_body)
        except msgspec.DecodeError as exc:  # not JSON, or not shaped like a completion
            raise _unreadable(exc, request_body, response_body, raw.status_code) from exc
        tool_input: dict[str, Any] | None = None
        texts: list[str] = []
        if completion.choices:
            message = completion.choices[0].message
            if self.structured == "tools":
                texts.append(message.content or "")
                calls = [
                    c.function
                    for c in message.tool_calls or []
                    if c.type in (None, "function")
                    and c.function is not None
                    and c.function.name == request.tool.name
                ]
                if calls:
                    arguments = calls[0].arguments
                    tool_input = _parse_json_object(arguments)
                    if tool_input is None:
                        texts.append(arguments)
            else:
                tool_input = _parse_json_object(message.content or "")
                if tool_input is None:
                    texts.append(message.content or "")
            texts.append(message.refusal or "")
        usage = completion.usage
        cached = 0
        if usage is not None and usage.prompt_tokens_details is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        return _Exchange(
            request_body=request_body,
            response_body=response_body,
            tool_input=tool_input,
            text="\n".join(t for t in texts if t),
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cache_read=cached,
        )


# -- configuration from the environment ---------------------------------------------------

_LIMITERS: dict[str, anyio.CapacityLimiter] = {}


def _concurrency(env: Mapping[str, str]) -> int:
    raw = env.get("MAMS_LLM_CONCURRENCY", "8")
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ProviderConfigError(
            f"MAMS_LLM_CONCURRENCY must be a whole number >= 1 (got {raw!r}); "
            "export MAMS_LLM_CONCURRENCY=8 or unset it",
            env_var="MAMS_LLM_CONCURRENCY",
        )
    return size


def _limiter(name: str, env: Mapping[str, str]) -> anyio.CapacityLimiter:
    """The process-wide limiter of provider `name`; its size is read when first needed."""
    if name not in _LIMITERS:
        _LIMITERS[name] = anyio.CapacityLimiter(_concurrency(env))
    return _LIMITERS[name]


def _require(env: Mapping[str, str], var: str, provider: str, spec: str) -> str:
    value = env.get(var, "").strip()
    if not value:
        raise ProviderConfigError(
            f"LLM {spec!r} needs an API key: export {var}=<your key> "
            '(or choose another model with --buyer-model / --seller-model, or "baseline")',
            provider=provider,
            env_var=var,
        )
    return value


def _base_url(env: Mapping[str, str], var: str, provider: str) -> str | None:
    """`env[var]` if it is an http(s) URL with a host; None if unset. Checked here, so a
    typo fails the command before it starts rather than every call of the run."""
    value = env.get(var) or None
    if value is None:
        return None
    try:
        parts = urllib.parse.urlsplit(value.strip())
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        # Not echoed when it may hold credentials (user:password@host).
        got = "a value with credentials in it" if "@" in value else repr(value)
        raise ProviderConfigError(
            f"{var} must be an http(s) URL with a host, like http://localhost:8000/v1 (got {got})",
            provider=provider,
            env_var=var,
        )
    return value.strip()


class _Settings(NamedTuple):
    """What a model string and the environment say to build."""

    name: str
    model: str
    key: str
    base_url: str | None
    structured: Literal["tools", "json_schema"] = "tools"


def _settings(spec: str, env: Mapping[str, str]) -> _Settings:
    name, _, model = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in DEFAULT_MODELS:
        raise ProviderConfigError(
            f"unknown LLM provider {name!r} in {spec!r}: use anthropic:<model>, "
            "openai:<model> or openrouter:<vendor/model>",
            provider=name,
        )
    model = model.strip() or DEFAULT_MODELS[name]
    _concurrency(env)
    if name == "anthropic":
        key = _require(env, "ANTHROPIC_API_KEY", name, spec)
        return _Settings(name, model, key, _base_url(env, "ANTHROPIC_BASE_URL", name))
    structured = env.get("MAMS_OPENAI_STRUCTURED", "tools").strip() or "tools"
    if structured not in ("tools", "json_schema"):
        raise ProviderConfigError(
            f"MAMS_OPENAI_STRUCTURED must be 'tools' or 'json_schema' (got {structured!r})",
            provider=name,
            env_var="MAMS_OPENAI_STRUCTURED",
        )
    mode: Literal["tools", "json_schema"] = "tools" if structured == "tools" else "json_schema"
    if name == "openrouter":
        key = _require(env, "OPENROUTER_API_KEY", name, spec)
        base_url = _base_url(env, "OPENROUTER_BASE_URL", name) or OPENROUTER_BASE_URL
        return _Settings(name, model, key, base_url, mode)
    base = _base_url(env, "OPENAI_BASE_URL", name)
    if not env.get("OPENAI_API_KEY", "").strip() and base is None:
        raise ProviderConfigError(
            f"LLM {spec!r} needs an API key: export OPENAI_API_KEY=<your key>, or "
            "OPENAI_BASE_URL=http://localhost:8000/v1 for a local OpenAI-compatible "
            "server (vLLM, Ollama, llama.cpp, LM Studio)",
            provider=name,
            env_var="OPENAI_API_KEY",
        )
    key = env.get("OPENAI_API_KEY", "").strip() or "not-needed"
    return _Settings(name, model, key, base, mode)


def check_provider(spec: str, env: Mapping[str, str] = os.environ) -> None:
    """Raise `ProviderConfigError` where `provider_for(spec, env)` would, building nothing
    and importing no SDK (what a command checks before it starts anything)."""
    _settings(spec, env)


def provider_for(
    spec: str,
    env: Mapping[str, str] = os.environ,
    *,
    timeout: float = 60.0,
    max_retries: int = 3,
) -> Provider:
    """Build the provider a model string names: "anthropic:<model>", "openai:<model>" or
    "openrouter:<vendor/model>" (a bare provider name takes its `DEFAULT_MODELS` entry).

    Reads ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL, OPENAI_API_KEY / OPENAI_BASE_URL (a local
    server may need no key), OPENROUTER_API_KEY / OPENROUTER_BASE_URL,
    MAMS_OPENAI_STRUCTURED ("tools" or "json_schema") and MAMS_LLM_CONCURRENCY from `env`.
    Raises `ProviderConfigError` naming the variable to export when one is missing.
    Providers of one SDK, base URL and key share one HTTP client (see the module doc).
    """
    settings = _settings(spec, env)
    if settings.name == "anthropic":
        return AnthropicProvider(
            settings.model,
            api_key=settings.key,
            base_url=settings.base_url,
            timeout=timeout,
            max_retries=max_retries,
            limiter=_limiter(settings.name, env),
        )
    return OpenAIProvider(
        settings.model,
        api_key=settings.key,
        base_url=settings.base_url,
        name=settings.name,
        structured=settings.structured,
        timeout=timeout,
        max_retries=max_retries,
        limiter=_limiter(settings.name, env),
    )
