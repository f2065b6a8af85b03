"""A subscription backed by a bounded anyio memory stream; shared by both bus implementations."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mams.bus.base import Message

__all__ = ["BufferedSubscription"]


class BufferedSubscription:
    """Delivers messages through a buffer of at most ``max_pending`` unread messages.

    The producer side calls `deliver`, which waits while the buffer is full. `unsubscribe`
    runs the owner's ``on_unsubscribe`` hook once, discards what is buffered, wakes any
    waiting reader (its iteration ends) and any waiting producer (its message is dropped).
    """

    __slots__ = ("_closed", "_on_unsubscribe", "_recv", "_send", "admit", "subject")

    def __init__(
        self,
        subject: str,
        max_pending: int,
        on_unsubscribe: Callable[[BufferedSubscription], Awaitable[None]],
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.subject = subject
        send: MemoryObjectSendStream[Message]
        recv: MemoryObjectReceiveStream[Message]
        send, recv = anyio.create_memory_object_stream[Message](max_pending)
        self._send = send
        self._recv = recv
        self._on_unsubscribe = on_unsubscribe
        self._closed = False
        # A cheap filter its reader may set: `admit(subject, data)` False drops a message
        # before it is buffered (the bus calls it first thing), so a flood the reader would
        # drop anyway costs neither a buffer slot nor a decode.
        self.admit: Callable[[str, bytes], bool] | None = None

    @property
    def closed(self) -> bool:
        """True once unsubscribed (or its bus closed)."""
        return self._closed

    async def deliver(self, message: Message) -> None:
        """Buffer one message, waiting while the buffer is full; dropped if unsubscribed
        or refused by `admit`."""
        if self.admit is not None and not self.admit(message.subject, message.data):
            return
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            await self.deliver_slow(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def deliver_nowait(self, message: Message) -> None:
        """Buffer one message now; raises `anyio.WouldBlock` if full (then use `deliver_slow`).

        Silently drops the message if unsubscribed. Exists so a hot path can skip a
        coroutine call per message.
        """
        try:  # noqa: SIM105 - hot path; contextlib.suppress costs an object per message
            self._send.send_nowait(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def deliver_slow(self, message: Message) -> None:
        """Buffer one message, waiting for room; dropped if unsubscribed meanwhile."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._send.send(message)

    def __aiter__(self) -> BufferedSubscription:
        """Iterate over delivered messages until unsubscribed."""
        return self

    async def __anext__(self) -> Message:
        """The next buffered message, waiting for one; `StopAsyncIteration` once closed."""
        # Fast path without a checkpoint: under load the buffer is rarely empty, and a
        # scheduling round trip per message would cost a large share of throughput. The
        # buffer is bounded, so a reader that never awaits still yields every max_pending.
        try:
            return self._recv.receive_nowait()
        except anyio.WouldBlock:
            pass
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        try:
            return await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def unsubscribe(self) -> None:
        """Stop delivery and end iteration; buffered messages are discarded. Idempotent."""
        if self._closed:
            return
        self.close_buffer()
        await self._on_unsubscribe(self)

    def close_buffer(self) -> None:
        """Close the buffer without running the unsubscribe hook (used when a bus closes)."""
        self._closed = True
        self._send.close()
        self._recv.close()
