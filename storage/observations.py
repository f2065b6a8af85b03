"""Observations of a negotiation (quality flags, analyst reviews) in their companion stream.

Observers never write into a negotiation's own stream: it stays exactly what the broker
committed, so replay and audit of the negotiation are untouched by later analysis. Each
negotiation has one companion stream (`observation_stream_id`), hash-chained like any other.

Appends are idempotent by content: an observation's event id is derived from its stream and
its encoded body, so the live monitor and an on-demand `mams analyze` can both record the same
findings and the log keeps each once.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID, uuid5

from mams.domain.events import (
    Observation,
    decode_observation,
    encode_event,
    event_type,
    observation_stream_id,
)
from mams.storage.errors import ConcurrencyError
from mams.storage.eventstore import EventStore
from mams.storage.model import NewEvent, StoredEvent

_RETRIES = 5


def observation_event_id(stream_id: UUID, data: bytes) -> UUID:
    """The deterministic event id of an observation body in a stream."""
    return uuid5(stream_id, data.decode())


async def load_observations(store: EventStore, negotiation_id: UUID) -> list[Observation]:
    """Every observation recorded for `negotiation_id`, in the order they were recorded."""
    return observations_of(await store.read(observation_stream_id(negotiation_id)))


def observations_of(rows: Sequence[StoredEvent]) -> list[Observation]:
    """The observations of a companion stream's stored rows, in order."""
    return [decode_observation(row.data) for row in rows]


async def record_observations(
    store: EventStore, negotiation_id: UUID, observations: Sequence[Observation]
) -> int:
    """Append the observations the companion stream does not hold yet; how many were new.

    Safe to call concurrently from several observers: a lost race on a seq re-reads the
    stream and retries; observations already stored (same body) are skipped.
    """
    stream = observation_stream_id(negotiation_id)
    bodies = [(encode_event(o), event_type(o)) for o in observations]
    for attempt in range(_RETRIES):
        stored = await store.read(stream)
        have = {row.event_id for row in stored}
        seq = stored[-1].seq if stored else 0
        batch: list[NewEvent] = []
        for data, kind in bodies:
            event_id = observation_event_id(stream, data)
            if event_id in have:
                continue
            have.add(event_id)
            seq += 1
            batch.append(NewEvent(stream, seq, event_id, kind, data))
        if not batch:
            return 0
        try:
            await store.append(batch)
        except ConcurrencyError:
            if attempt == _RETRIES - 1:
                raise
            continue
        return len(batch)
    return 0
