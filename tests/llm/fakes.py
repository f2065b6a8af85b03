"""Loopback LLM servers that speak the Anthropic and OpenAI wire formats, for tests.

Each fake is a stdlib `ThreadingHTTPServer` on 127.0.0.1, a free port, in a daemon thread.
Point the real SDK at `.url` and script the replies:

    with FakeAnthropic() as fake:
        fake.queue(rate_limited(), anthropic_tool_use("make_offer", {"price": 90}))
        provider = AnthropicProvider("claude-x", api_key="k", base_url=fake.url)
        ...
        assert fake.requests[0]["tool_choice"] == {"type": "tool", "name": "make_offer"}

Replies come from `.queue(...)` first (in order); once the queue is empty, from `.handler`
(a callable given the parsed request body), so a test can script a whole negotiator.
With neither, the fake answers 500 with a body saying it ran out of replies, which makes a
forgotten reply fail loudly instead of hanging.

The handler runs on the server's thread, not the event loop: keep it quick, and use
`threading` primitives (not anyio ones) to coordinate with the test.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "FakeAnthropic",
    "FakeLLMServer",
    "FakeOpenAI",
    "Handler",
    "Reply",
    "anthropic_text",
    "anthropic_tool_use",
    "bad_request",
    "fakes",
    "openai_json_content",
    "openai_text",
    "openai_tool_call",
    "rate_limited",
    "server_error",
]


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP reply: status, JSON body (a dict is dumped; a str is sent as-is),
    an optional delay before answering (to provoke client timeouts), and extra headers."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[dict[str, Any]], Reply]


class FakeLLMServer:
    """Common machinery; use `FakeAnthropic` or `FakeOpenAI`."""

    path: ClassVar[str]
    url_suffix: ClassVar[str]
    # What each wire format calls its error body; used by the fallback "no reply" error.
    flavour: ClassVar[str]

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.handler: Handler | None = None
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------------------------

    def queue(self, *replies: Reply) -> None:
        """Append replies, served in order before `handler` is consulted."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def url(self) -> str:
        """Base URL to hand to the SDK (`base_url=`)."""
        if self._server is None:
            raise RuntimeError("the fake server is not running; use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.url_suffix}"

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
            handler = self.handler
        if handler is not None:
            return handler(body)
        return Reply(500, _error_body(self.flavour, "api_error", "fake server: no reply queued"))

    # -- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real APIs; needs Content-Length
            # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus
            # the client's delayed ACK adds ~40 ms to every reply.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: dict[str, Any] = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"_unparseable": raw.decode("utf-8", "replace")}
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.paths.append(self.path)
                if self.path.split("?")[0] != fake.path:
                    reply = Reply(404, _error_body(fake.flavour, "not_found_error", self.path))
                else:
                    try:
                        reply = fake._next_reply(body)
                    except Exception as exc:  # a broken handler should fail the test, not hang it
                        reply = Reply(500, _error_body(fake.flavour, "api_error", repr(exc)))
                if reply.delay and fake._closing.wait(reply.delay):
                    return
                payload = (
                    reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                ).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (timeout); that is the point of a delayed reply.
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # wake delayed replies so they do not outlive the test
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class FakeAnthropic(FakeLLMServer):
    """Answers `POST /v1/messages` like the Anthropic Messages API."""

    path = "/v1/messages"
    url_suffix = ""  # the SDK appends /v1/messages itself
    flavour = "anthropic"


class FakeOpenAI(FakeLLMServer):
    """Answers `POST /v1/chat/completions` like OpenAI (and vLLM, Ollama, OpenRouter...)."""

    path = "/v1/chat/completions"
    url_suffix = "/v1"  # OpenAI-style base URLs include the version
    flavour = "openai"


@contextmanager
def fakes() -> Iterator[tuple[FakeAnthropic, FakeOpenAI]]:
    """Both fakes at once (handy for benchmarks and cross-provider tests)."""
    with FakeAnthropic() as anthropic, FakeOpenAI() as openai:
        yield anthropic, openai


# -- body builders: Anthropic ------------------------------------------------------------


def _anthropic_message(
    content: list[dict[str, Any]],
    stop_reason: str,
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read: int,
    cache_write: int,
) -> Reply:
    return Reply(
        200,
        {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write,
            },
        },
        headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"},
    )


def anthropic_tool_use(
    name: str,
    input: dict[str, Any],
    *,
    text: str = "",
    model: str = "claude-fake",
    input_tokens: int = 120,
    output_tokens: int = 40,
    cache_read: int = 0,
    cache_write: int = 0,
) -> Reply:
    """A Messages reply that calls tool `name` with `input` (optionally after some prose)."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    content.append(
        {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": input}
    )
    return _anthropic_message(
        content,
        "tool_use",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read=cache_read,
        cache_write=cache_write,
    )


def anthropic_text(
    text: str,
    *,
    model: str = "claude-fake",
    input_tokens: int = 120,
    output_tokens: int = 40,
) -> Reply:
    """A Messages reply with prose only (the model ignored the tool)."""
    return _anthropic_message(
        [{"type": "text", "text": text}],
        "end_turn",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read=0,
        cache_write=0,
    )


# -- body builders: OpenAI ---------------------------------------------------------------


def _openai_completion(
    message: dict[str, Any],
    finish_reason: str,
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int | None,
) -> Reply:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return Reply(
        200,
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "refusal": None, **message},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        },
    )


def openai_tool_call(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    content: str | None = None,
    model: str = "gpt-fake",
    prompt_tokens: int = 120,
    completion_tokens: int = 40,
    cached_tokens: int | None = None,
) -> Reply:
    """A chat completion calling function `name`. A str `arguments` is sent verbatim, so
    tests can send malformed JSON; a dict is JSON-encoded as real servers do."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }
    return _openai_completion(
        {"content": content, "tool_calls": [call]},
        "tool_calls",
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
    )


def openai_json_content(
    obj: dict[str, Any] | str,
    *,
    model: str = "gpt-fake",
    prompt_tokens: int = 120,
    completion_tokens: int = 40,
    cached_tokens: int | None = None,
) -> Reply:
    """A chat completion whose message content is JSON (the `json_schema` structured mode).
    A str is sent verbatim as the content."""
    return openai_text(
        obj if isinstance(obj, str) else json.dumps(obj),
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
    )


def openai_text(
    text: str,
    *,
    model: str = "gpt-fake",
    prompt_tokens: int = 120,
    completion_tokens: int = 40,
    cached_tokens: int | None = None,
) -> Reply:
    """A chat completion with prose content and no tool call."""
    return _openai_completion(
        {"content": text},
        "stop",
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
    )


# -- error replies (both wire formats) ---------------------------------------------------


def _error_body(flavour: str, kind: str, message: str) -> dict[str, Any]:
    if flavour == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def rate_limited(
    retry_after: float | None = 0, *, flavour: str = "anthropic", delay: float = 0.0
) -> Reply:
    """429 with a `retry-after` header (seconds; None leaves the header out)."""
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    return Reply(
        int(HTTPStatus.TOO_MANY_REQUESTS),
        _error_body(flavour, "rate_limit_error", "rate limited (fake)"),
        delay=delay,
        headers=headers,
    )


def server_error(status: int = 500, *, flavour: str = "anthropic") -> Reply:
    """A 5xx the client should retry (500 by default; 529 is Anthropic's 'overloaded')."""
    return Reply(status, _error_body(flavour, "api_error", "internal error (fake)"))


def bad_request(message: str = "invalid request (fake)", *, flavour: str = "anthropic") -> Reply:
    """A 400 the client must not retry."""
    return Reply(400, _error_body(flavour, "invalid_request_error", message))
