"""What `mams export --format parquet|csv` reads: which rooms (a negotiation, a session's, an
experiment's or all), each room with its opening event and its analysis, and the message
rows of the read model. Nothing is written here.

A room belongs to an experiment arm when its session is one of the `experiment_arms`
(migration 0013, `mams experiment`); a log from before that table, or a room of no
experiment, has no experiment, arm or scenario (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from mams.domain.analysis import NegotiationAnalysis, analyze
from mams.domain.events import (
    AnalystReviewed,
    NegotiationStarted,
    QualityFlagged,
    observation_stream_id,
)
from mams.domain.quality import check
from mams.storage.analyses import merge_flags, negotiation_of
from mams.storage.eventstore import EventStore
from mams.storage.observations import observations_of
from mams.storage.readmodels import Queries


class RoomRef(msgspec.Struct, frozen=True, kw_only=True):
    """A room of the read models, and the experiment arm its session belongs to."""

    negotiation_id: UUID
    session_id: UUID
    seed: int | None
    started_at: datetime
    ended_at: datetime | None
    experiment_id: UUID | None = None
    arm: str | None = None
    scenario: str | None = None


class Room(msgspec.Struct, frozen=True, kw_only=True):
    """A room with its opening event and its analysis (as `mams report` analyses it)."""

    ref: RoomRef
    started: NegotiationStarted
    analysis: NegotiationAnalysis


class MessageRow(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the `messages` read model."""

    negotiation_id: UUID
    seq: int
    round: int
    sender: str
    recipients: tuple[str, ...]
    text: str | None
    offer_unit_price: Decimal | None
    offer_quantity: int | None
    sent_at: datetime


async def has_experiments(conn: Queries) -> bool:
    """Whether this log has the experiments' tables (migration 0013)."""
    return bool(await conn.fetchval("SELECT to_regclass('experiment_arms') IS NOT NULL"))


async def has_experiment(conn: Queries, experiment_id: UUID) -> bool:
    """Whether the log holds this experiment."""
    if not await has_experiments(conn):
        return False
    found = await conn.fetchval("SELECT 1 FROM experiments WHERE experiment_id = $1", experiment_id)
    return found is not None


async def room_refs(
    conn: Queries,
    *,
    negotiation: UUID | None = None,
    session: UUID | None = None,
    experiment: UUID | None = None,
) -> list[RoomRef]:
    """The rooms the read models list (all, or those of one negotiation, session or
    experiment), oldest first."""
    if await has_experiments(conn):
        arm = (
            "LEFT JOIN LATERAL (SELECT experiment_id, arm, scenario FROM experiment_arms ea"
            " WHERE ea.session_id = r.session_id ORDER BY experiment_id, arm, scenario"
            " LIMIT 1) a ON true"
        )
        cols = "a.experiment_id, a.arm, a.scenario"
    elif experiment is not None:
        return []
    else:
        arm, cols = "", "NULL::uuid AS experiment_id, NULL::text AS arm, NULL::text AS scenario"
    rows = await conn.fetch(
        f"SELECT r.negotiation_id, r.session_id, r.seed, r.started_at, r.ended_at, {cols}"
        f" FROM negotiation_runs r {arm}"
        " WHERE ($1::uuid IS NULL OR r.negotiation_id = $1)"
        " AND ($2::uuid IS NULL OR r.session_id = $2)"
        + (" AND ($3::uuid IS NULL OR a.experiment_id = $3)" if arm else " AND $3::uuid IS NULL")
        + " ORDER BY r.started_at, r.negotiation_id",
        negotiation,
        session,
        experiment,
    )
    return [
        RoomRef(
            negotiation_id=r["negotiation_id"],
            session_id=r["session_id"],
            seed=r["seed"],
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            experiment_id=r["experiment_id"],
            arm=r["arm"],
            scenario=r["scenario"],
        )
        for r in rows
    ]


async def rooms_of(store: EventStore, refs: Sequence[RoomRef]) -> list[Room]:
    """Each room's opening event and analysis, from one read of their streams and their
    companions (the quality checks run on the log, merged with the recorded flags, as
    `storage.analyses.analyses_of`)."""
    ids = [r.negotiation_id for r in refs]
    companions = [observation_stream_id(nid) for nid in ids]
    streams = await store.read_streams([*ids, *companions])
    out: list[Room] = []
    for ref, companion in zip(refs, companions, strict=True):
        events, times = negotiation_of(ref.negotiation_id, streams.get(ref.negotiation_id, []))
        observed = observations_of(streams.get(companion, []))
        flags = merge_flags([o for o in observed if isinstance(o, QualityFlagged)], check(events))
        reviews = [o for o in observed if isinstance(o, AnalystReviewed)]
        started = events[0]
        assert isinstance(started, NegotiationStarted)  # negotiation_of checks it
        out.append(Room(ref=ref, started=started, analysis=analyze(events, flags, reviews, times)))
    return out


async def message_rows(conn: Queries, ids: Sequence[UUID]) -> list[MessageRow]:
    """The messages of these rooms, room by room in the order given, each in seq order."""
    rows = await conn.fetch(
        "SELECT negotiation_id, seq, round, sender, recipients, text, offer_unit_price,"
        " offer_quantity, sent_at FROM messages WHERE negotiation_id = ANY($1::uuid[])"
        " ORDER BY array_position($1::uuid[], negotiation_id), seq",
        list(ids),
    )
    return [
        MessageRow(
            negotiation_id=r["negotiation_id"],
            seq=r["seq"],
            round=r["round"],
            sender=r["sender"],
            recipients=tuple(r["recipients"]),
            text=r["text"],
            offer_unit_price=r["offer_unit_price"],
            offer_quantity=r["offer_quantity"],
            sent_at=r["sent_at"],
        )
        for r in rows
    ]
