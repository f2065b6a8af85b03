"""An in-process Bus with NATS subject matching, for fast unit tests and single-process runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from mams.bus._buffer import BufferedSubscription
from mams.bus.base import (
    DEFAULT_MAX_PENDING,
    BusClosedError,
    Message,
    Subscription,
    validate_pattern,
    validate_subject,
)

__all__ = ["InMemoryBus", "subject_matches"]


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a concrete ``subject`` matches a subscription ``pattern``, as NATS defines it.

    Tokens are separated by ``.``; ``*`` matches exactly one token; ``>`` as the last token
    matches one or more remaining tokens. Everything else must be equal token by token.
    Both arguments are assumed valid (see `validate_pattern` / `validate_subject`).
    """
    p = pattern.split(".")
    s = subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if token != "*" and token != s[i]:
            return False
    return len(p) == len(s)


class InMemoryBus:
    """A `Bus` whose subscribers live in this process.

    Backpressure: each subscription buffers at most ``max_pending`` unread messages. When a
    matching subscription's buffer is full, `publish` waits until its reader takes one (so
    a stuck reader stalls its publishers; a real NATS server would instead drop messages
    for that slow consumer). Messages from one publisher reach each subscriber in order.
    """

    def __init__(self) -> None:
        self._subs: dict[int, tuple[str, BufferedSubscription]] = {}
        self._closed = False

    async def publish(self, subject: str, data: bytes) -> None:
        """Deliver ``data`` to every matching subscription, waiting on full buffers."""
        if self._closed:
            raise BusClosedError("publish on a closed InMemoryBus")
        validate_subject(subject)
        message = Message(subject, bytes(data))
        # Snapshot: a subscription made while we wait on a full buffer does not get this one.
        targets = [sub for pattern, sub in self._subs.values() if subject_matches(pattern, subject)]
        for sub in targets:
            await sub.deliver(message)
        await anyio.lowlevel.checkpoint()

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Never called: an in-process bus has no connection to lose."""

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        """Subscribe to a pattern (``*`` and ``>`` wildcards); in place once this returns."""
        if self._closed:
            raise BusClosedError("subscribe on a closed InMemoryBus")
        validate_pattern(subject)
        sub = BufferedSubscription(subject, max_pending, self._forget)
        self._subs[id(sub)] = (subject, sub)
        return sub

    async def _forget(self, sub: BufferedSubscription) -> None:
        self._subs.pop(id(sub), None)

    async def flush(self) -> None:
        """Nothing to flush: `publish` hands messages straight to subscription buffers."""
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Close the bus and end every subscription. Idempotent."""
        self._closed = True
        subs = [sub for _, sub in self._subs.values()]
        self._subs.clear()
        for sub in subs:
            sub.close_buffer()
