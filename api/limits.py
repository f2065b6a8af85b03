"""Limits on what one caller may make the HTTP API do: the size of a request body, and
how many requests a token may make.

- **Body size** (`BodyLimit`, ASGI middleware around the whole app): a `Content-Length`
  over `api.bodies.MAX_BODY` is answered 413 before a byte of the body is read; a body
  sent without one (chunked) is counted as it arrives and answered 413 as soon as it
  passes the limit. Middleware, so it holds for every route, whatever reads the body.
- **Requests per token** (`RateLimits`, applied by `api.app.Api` after authentication):
  a moving window per token (`limits`' MovingWindowRateLimiter in memory), so the key is
  a verified identity and nobody can spend another token's budget by naming it; over it,
  429 with `Retry-After` (whole seconds). Without a token configured every caller shares
  the budget of "open".
"""

from __future__ import annotations

import math
import time

import msgspec
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mams.api.bodies import MAX_BODY

DEFAULT_RATE = "20/second"
_json = msgspec.json.Encoder()


class BodyTooLargeError(Exception):
    """A request body that went past the limit while it was being read."""


def too_large(limit: int) -> bytes:
    """The 413's body (the API's error shape)."""
    return _json.encode(
        {
            "error": f"the request body is larger than {limit} bytes; send less",
            "problems": [{"path": "$", "message": f"at most {limit} bytes"}],
        }
    )


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes (declared or sent)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(send)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLargeError
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = too_large(self.limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RateLimits:
    """Requests per token in a moving window, e.g. "20/second" or "20/second;600/minute"
    (the `limits` notation)."""

    def __init__(self, spec: str = DEFAULT_RATE) -> None:
        self.spec = spec
        self.items: list[RateLimitItem] = parse_many(spec)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def retry_after(self, key: str) -> int | None:
        """Counts one request of `key`; None if it is within every limit, else the whole
        seconds until it would be."""
        for item in self.items:
            if not await self.limiter.hit(item, key):
                stats = await self.limiter.get_window_stats(item, key)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


def parse_rate(spec: str) -> RateLimits:
    """`spec` as RateLimits; ValueError naming the notation if it is not one."""
    try:
        limits = RateLimits(spec)
    except ValueError:
        limits = None
    if limits is None or any(item.amount < 1 for item in limits.items):
        raise ValueError(
            f"{spec!r} is not a rate: write it as N/second, N/minute or N/hour with N at "
            "least 1, several joined by ';' (e.g. 20/second;600/minute)"
        )
    return limits
