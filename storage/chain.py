"""The hash chain over each event stream (tamper evidence for the log).

Every event carries `prev_hash`, the hash of the previous event of its stream (32 zero
bytes for the first), and its own `hash`:

    hash = sha256(prev_hash || stream_id (16 bytes) || seq (8 bytes, big-endian)
                  || event_id (16 bytes) || len(type) (4 bytes, big-endian) || type (UTF-8)
                  || canonical(data))

`canonical(data)` is the event's JSON parsed and re-encoded compactly with sorted keys, so
the hash survives PostgreSQL's jsonb normalisation (whitespace dropped, keys reordered).
Editing, deleting or reordering stored rows breaks the chain at the first changed link.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

import msgspec

GENESIS = bytes(32)
HASH_SIZE = 32

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder(order="sorted")


def canonical(data: bytes) -> bytes:
    """The JSON `data` in canonical form: compact, keys sorted, equal JSON -> equal bytes."""
    return _encoder.encode(_decoder.decode(data))


def link_hash(
    prev_hash: bytes, stream_id: UUID, seq: int, event_id: UUID, type_: str, data: bytes
) -> bytes:
    """The hash of one event given the hash of the event before it in its stream."""
    tag = type_.encode("utf-8")
    # One buffer, one update: this runs for every appended event.
    return hashlib.sha256(
        b"".join(
            (
                prev_hash,
                stream_id.int.to_bytes(16, "big"),  # == stream_id.bytes, without the property
                seq.to_bytes(8, "big", signed=True),
                event_id.int.to_bytes(16, "big"),
                len(tag).to_bytes(4, "big"),
                tag,
                canonical(data),
            )
        )
    ).digest()
