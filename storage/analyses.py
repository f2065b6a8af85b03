"""A negotiation's analysis as the log holds it: its events and commit times, the quality
checks run on them now merged with the flags and reviews recorded in its companion stream,
folded by `domain.analysis.analyze`. One reader for `mams analyze`, `mams report` and the
HTTP API's analytics; nothing is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import msgspec

from mams.domain.analysis import NegotiationAnalysis, analyze
from mams.domain.errors import ConfigError
from mams.domain.events import (
    AnalystReviewed,
    Event,
    NegotiationStarted,
    QualityFlagged,
    decode_event,
    observation_stream_id,
)
from mams.domain.quality import check
from mams.storage.eventstore import EventStore
from mams.storage.model import StoredEvent
from mams.storage.observations import observations_of


class NotANegotiationError(ConfigError):
    """The id names no negotiation of the log (no events, or not a room's stream)."""


def negotiation_of(nid: UUID, stored: Sequence[StoredEvent]) -> tuple[list[Event], list[datetime]]:
    """The decoded events of a negotiation's stored rows and their commit times; raises
    NotANegotiationError, saying what to do, when they are not a negotiation's."""
    if not stored:
        raise NotANegotiationError(
            f"no events for negotiation {nid}; `mams negotiations` lists them"
        )
    try:
        events = [decode_event(row.data) for row in stored]
    except msgspec.ValidationError:
        events = []
    if not events or not isinstance(events[0], NegotiationStarted):
        raise NotANegotiationError(
            f"stream {nid} is not a negotiation (no negotiation.started first); "
            "`mams negotiations` lists negotiation ids"
        )
    return events, [row.recorded_at for row in stored]


def merge_flags(stored: list[QualityFlagged], fresh: list[QualityFlagged]) -> list[QualityFlagged]:
    """Stored findings plus this run's, each once (findings are equal by content)."""
    return list(dict.fromkeys([*stored, *fresh]))


async def analyses_of(
    store: EventStore, ids: list[UUID], _: object = None
) -> list[NegotiationAnalysis]:
    """The analysis of each negotiation of `ids`, in order, from one read of their streams
    and their companions: the quality checks run on the log, merged with the flags and
    reviews recorded (`mams.storage.parallel` runs this over chunks of a whole log)."""
    companions = [observation_stream_id(nid) for nid in ids]
    streams = await store.read_streams([*ids, *companions])
    out: list[NegotiationAnalysis] = []
    for nid, companion in zip(ids, companions, strict=True):
        events, times = negotiation_of(nid, streams.get(nid, []))
        observed = observations_of(streams.get(companion, []))
        flags = merge_flags([o for o in observed if isinstance(o, QualityFlagged)], check(events))
        reviews = [o for o in observed if isinstance(o, AnalystReviewed)]
        out.append(analyze(events, flags, reviews, times))
    return out


async def analysis_of(store: EventStore, nid: UUID) -> NegotiationAnalysis:
    """One negotiation's analysis (see `analyses_of`)."""
    [analysis] = await analyses_of(store, [nid])
    return analysis
