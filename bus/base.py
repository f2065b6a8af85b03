"""The Bus protocol every actor talks to, and the errors a bus raises.

Two implementations satisfy it: `mams.bus.memory.InMemoryBus` (fast unit tests) and
`mams.bus.nats.NatsBus` (a real NATS server). One contract test suite runs against both.

Subjects are NATS subjects: dot-separated tokens. In a subscription pattern ``*`` matches
exactly one token and ``>`` (only as the last token) matches one or more remaining tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

import msgspec

from mams.domain.errors import MamsError

# The one redactor (domain/redact.py), re-exported: bus users import it from here.
from mams.domain.redact import redact_url as redact_url

__all__ = [
    "DEFAULT_MAX_PENDING",
    "Bus",
    "BusClosedError",
    "BusConnectError",
    "BusError",
    "BusSubjectError",
    "Message",
    "Subscription",
]

DEFAULT_MAX_PENDING = 10_000


class Message(msgspec.Struct, frozen=True, gc=False):
    """One message as delivered to a subscriber: the concrete subject and raw payload."""

    subject: str
    data: bytes


class BusError(MamsError):
    """Anything that went wrong talking to the bus."""


class BusConnectError(BusError):
    """Could not connect to a bus server. Carries the ``url`` that failed."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(message)


class BusClosedError(BusError):
    """The bus (or the subscription) is closed; nothing more can be sent or received."""


class BusSubjectError(BusError, ValueError):
    """A subject or subscription pattern is malformed. Carries the ``subject``."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"bad subject {subject!r}: {reason}")


@runtime_checkable
class Subscription(Protocol):
    """Messages matching one subscription pattern, in arrival order.

    Iterate with ``async for msg in sub``; iteration ends after `unsubscribe` (or when the
    bus closes). Messages still buffered at unsubscribe time are discarded.
    """

    @property
    def subject(self) -> str:
        """The pattern this subscription was made with."""
        ...

    def __aiter__(self) -> AsyncIterator[Message]:
        """Iterate over delivered messages."""
        ...

    async def __anext__(self) -> Message:
        """The next delivered message; `StopAsyncIteration` once unsubscribed."""
        ...

    async def unsubscribe(self) -> None:
        """Stop delivery. Idempotent."""
        ...


@runtime_checkable
class Bus(Protocol):
    """Publish/subscribe over NATS-style subjects.

    Ordering: messages from one publisher on one bus connection arrive at each subscriber
    in the order published. Nothing else is promised (no persistence, no redelivery).
    """

    async def publish(self, subject: str, data: bytes) -> None:
        """Send ``data`` to every current subscriber whose pattern matches ``subject``.

        ``subject`` must be concrete (no wildcards).
        """
        ...

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        """Subscribe to a pattern; at most ``max_pending`` messages wait unread in its buffer.

        When `subscribe` returns, the subscription is in place: a later `publish` (after
        `flush` on a networked bus) reaches it.
        """
        ...

    async def flush(self) -> None:
        """Wait until everything published so far has reached the server (round trip)."""
        ...

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call `hook` each time the connection comes back after an outage (subscriptions
        in place again). What was sent to us meanwhile is lost, so hooks re-send what the
        other side may need. A failing hook is logged, never raised."""
        ...

    async def close(self) -> None:
        """Close the bus; its subscriptions end. Idempotent."""
        ...


def validate_subject(subject: str) -> str:
    """Check a concrete subject to publish on: non-empty tokens, no wildcards, no spaces.

    Returns it unchanged, or raises `BusSubjectError` saying what is wrong.
    """
    _check_tokens(subject)
    for token in subject.split("."):
        if token in ("*", ">"):
            raise BusSubjectError(subject, "wildcards are only allowed in subscriptions")
    return subject


def validate_pattern(pattern: str) -> str:
    """Check a subscription pattern: like a subject, and ``>`` may only be the last token.

    Returns it unchanged, or raises `BusSubjectError` saying what is wrong.
    """
    _check_tokens(pattern)
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i != len(tokens) - 1:
            raise BusSubjectError(pattern, "'>' may only be the last token")
    return pattern


def _check_tokens(subject: str) -> None:
    if not subject:
        raise BusSubjectError(subject, "a subject must not be empty")
    for ch in subject:
        if ch in " \t\r\n":
            raise BusSubjectError(subject, "a subject must not contain whitespace")
    for token in subject.split("."):
        if not token:
            raise BusSubjectError(subject, "empty token (leading, trailing or double '.')")
        if len(token) > 1 and ("*" in token or ">" in token):
            # NATS treats "a*" as a literal; we forbid it so nobody thinks it is a wildcard.
            raise BusSubjectError(subject, f"token {token!r} mixes a wildcard with text")
