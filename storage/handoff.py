"""Memory-stream hand-offs for hot loops (the broker's and the committer's).

`put` and `take` hand an item on without a scheduling round trip (anyio's `send` and
`receive` always checkpoint): they yield only when the stream is full or empty, so work
that piled up meanwhile is done, published and written in one go. They await outside
the `except` block, so a waiting task does not keep the `WouldBlock` (its traceback and
frame: objects the garbage collector would walk) alive while it waits. They live in
storage/ because the committer needs them and storage imports no actor; actors.queues
re-exports them.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

_T = TypeVar("_T")


async def put(stream: MemoryObjectSendStream[_T], item: _T) -> None:
    """Send `item`, waiting only if the stream is full."""
    try:
        stream.send_nowait(item)
        return
    except anyio.WouldBlock:
        pass
    await stream.send(item)


async def take(stream: MemoryObjectReceiveStream[_T]) -> _T:
    """Receive an item, waiting only if the stream is empty."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        pass
    return await stream.receive()
