"""Small builders shared by the storage tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID, uuid4

from mams.storage.eventstore import InMemoryEventStore
from mams.storage.model import NewEvent, StoredEvent


def event(
    stream_id: UUID, seq: int, body: object | None = None, type_: str = "test.happened"
) -> NewEvent:
    """A NewEvent with a fresh event_id and a small JSON body."""
    payload = body if body is not None else {"seq": seq}
    return NewEvent(stream_id, seq, uuid4(), type_, json.dumps(payload).encode())


def stream(stream_id: UUID, first: int, count: int) -> list[NewEvent]:
    """`count` consecutive events of `stream_id` starting at seq `first`."""
    return [event(stream_id, seq) for seq in range(first, first + count)]


def same(stored: list[StoredEvent], new: list[NewEvent]) -> bool:
    """Stored events equal new ones: ids, keys, types, and JSON values (not bytes: jsonb)."""
    if len(stored) != len(new):
        return False
    return all(
        (s.stream_id, s.seq, s.event_id, s.type) == (n.stream_id, n.seq, n.event_id, n.type)
        and json.loads(s.data) == json.loads(n.data)
        for s, n in zip(stored, new, strict=True)
    )


class WrappedStore:
    """An in-memory EventStore that tests wrap: subclasses override `append` (to fail, to
    hold, to count) and call `super().append`; reads go straight to `inner`."""

    def __init__(self) -> None:
        self.inner = InMemoryEventStore()

    async def append(self, events: Sequence[NewEvent]) -> None:
        await self.inner.append(events)

    async def read(self, stream_id: UUID, *, after_seq: int = 0) -> list[StoredEvent]:
        return await self.inner.read(stream_id, after_seq=after_seq)

    async def stream_ids(self) -> list[UUID]:
        return await self.inner.stream_ids()

    async def read_streams(
        self, stream_ids: Sequence[UUID], *, types: Sequence[str] | None = None
    ) -> dict[UUID, list[StoredEvent]]:
        return await self.inner.read_streams(stream_ids, types=types)

    async def last_seq(self, stream_id: UUID) -> int:
        return await self.inner.last_seq(stream_id)
