"""What the event log stores: events going in (`NewEvent`) and coming out (`StoredEvent`)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec


class NewEvent(msgspec.Struct, frozen=True, gc=False):
    """An event to append.

    `seq` is 1-based within `stream_id`; `(stream_id, seq)` is unique (optimistic
    concurrency) and `event_id` is unique (idempotency). `data` is the UTF-8 JSON of the
    event body. PostgreSQL stores it as jsonb, so it reads back as equal JSON, not
    necessarily the same bytes (jsonb drops insignificant whitespace and reorders keys).
    """

    stream_id: UUID
    seq: int
    event_id: UUID
    type: str
    data: bytes


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event read back from the log, with the time the log committed it.

    `prev_hash` and `hash` are its links in the stream's hash chain (`mams.storage.chain`);
    empty for rows written before the chain existed.
    """

    stream_id: UUID
    seq: int
    event_id: UUID
    type: str
    data: bytes
    recorded_at: datetime
    prev_hash: bytes = b""
    hash: bytes = b""
