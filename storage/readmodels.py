"""Read models: the seed's tables, kept in step with the log.

`ReadModelProjector` computes the rows; the event store writes them in the statement that
appends the events (`mams_append`), so a row exists exactly when the events behind it are
committed. Session configurations are written once by
`save_session` and serve any number of later runs (`load_session`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from mams.domain.config import Scenario, parse_scenario, scenario_to_raw
from mams.domain.events import (
    NegotiationEnded,
    NegotiationStarted,
    RoundOpened,
    decode_event,
)
from mams.domain.opening import scenario_of
from mams.storage.model import NewEvent

_json = msgspec.json.Encoder(decimal_format="string")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


# The event types behind negotiation_runs and outcomes rows; message rows `mams_append`
# derives from the message events' own data, one per event (keyed by room and seq; a
# message id is unique within its room only: migration 0009).
_PROJECTED = frozenset(
    str(t.__struct_config__.tag) for t in (NegotiationStarted, RoundOpened, NegotiationEnded)
)


class ReadModelProjector:
    """Projects committed events into negotiation_runs, messages and outcomes.

    `rows` turns a batch into the run and outcome rows `mams_append` (migration 0005)
    writes in the same statement as the events, for those events it actually inserted;
    with any document (even an empty one) it also writes their message rows.
    """

    def rows(self, events: Sequence[NewEvent]) -> bytes:
        """The read-model rows of a batch, as the JSON document `mams_append` takes."""
        runs: list[dict[str, Any]] = []
        rounds: list[dict[str, Any]] = []
        ends: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        for stored in events:
            if stored.type not in _PROJECTED:
                continue  # messages are derived in SQL; observations stay in their stream
            nid, e_id = stored.stream_id, stored.event_id
            match decode_event(stored.data):
                case NegotiationStarted() as e:
                    brains = sorted({e.buyer.brain, *(s.brain for s in e.sellers)})
                    runs.append(
                        {
                            "e": e_id,
                            "nid": nid,
                            "session": e.session_id,
                            "item": e.item_name,
                            "brain": " / ".join(brains),
                            "max_rounds": e.max_rounds,
                            "seed": e.seed,
                            "buyer": e.buyer.agent_id,
                            "sellers": [s.agent_id for s in e.sellers],
                        }
                    )
                case RoundOpened(round=n):
                    rounds.append({"e": e_id, "nid": nid, "round": n})
                case NegotiationEnded(status=status, outcome=o):
                    ends.append({"e": e_id, "nid": nid, "status": status, "rounds": o.rounds})
                    outcomes.append(
                        {
                            "e": e_id,
                            "nid": nid,
                            "type": o.type,
                            "seller": o.seller,
                            "price": o.unit_price,
                            "qty": o.quantity,
                            "total": o.total,
                            "rounds": o.rounds,
                        }
                    )
                case _:
                    pass
        tables = {
            "runs": runs,
            "rounds": rounds,
            "ends": ends,
            "outcomes": outcomes,
        }
        present = {name: rows for name, rows in tables.items() if rows}  # mams_append skips
        return _json.encode(present)


async def save_session(conn: Conn, session_id: UUID, scenario: Scenario) -> None:
    """Store a scenario as a session (its JSON plus the normalized config tables)."""
    raw = _json.encode(scenario_to_raw(scenario)).decode()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO sessions (session_id, name, scenario) VALUES ($1, $2, $3)",
            session_id,
            scenario.name,
            raw,
        )
        await conn.executemany(
            "INSERT INTO buyer_configs (session_id, item_name, quantity, min_price, max_price) "
            "VALUES ($1, $2, $3, $4, $5)",
            [
                (session_id, i.item_name, i.quantity, i.min_price, i.max_price)
                for i in scenario.buyer.items
            ],
        )
        await conn.executemany(
            "INSERT INTO seller_configs (session_id, handle, agent_id, style, "
            "customer_retention_weight, profit_maximization_weight) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (
                    session_id,
                    s.handle,
                    s.agent_id,
                    s.style,
                    s.customer_retention_weight,
                    s.profit_maximization_weight,
                )
                for s in scenario.sellers
            ],
        )
        await conn.executemany(
            "INSERT INTO seller_inventory (session_id, handle, item_name, cost_price, "
            "selling_price, least_price) VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (session_id, s.handle, e.item_name, e.cost_price, e.selling_price, e.least_price)
                for s in scenario.sellers
                for e in s.inventory
            ],
        )


async def has_session(conn: Conn, session_id: UUID) -> bool:
    """Whether a session is stored."""
    return bool(await conn.fetchval("SELECT 1 FROM sessions WHERE session_id = $1", session_id))


async def restore_sessions(
    conn: Conn, rooms: Sequence[NegotiationStarted], *, name: str
) -> list[tuple[UUID, Scenario]]:
    """Store, for each session of `rooms` this database lacks, the scenario its rooms show
    (`scenario_of`), so their read models can be written (a run needs its session row).
    Returns what it stored; raises ScenarioError if some session's rooms make no scenario."""
    by_session: dict[UUID, list[NegotiationStarted]] = {}
    for room in rooms:
        by_session.setdefault(room.session_id, []).append(room)
    made: list[tuple[UUID, Scenario]] = []
    for session_id, opened in by_session.items():
        if await has_session(conn, session_id):
            continue
        scenario = scenario_of(opened, name=name)
        await save_session(conn, session_id, scenario)
        made.append((session_id, scenario))
    return made


async def load_session(conn: Conn, session_id: UUID) -> Scenario | None:
    """The scenario stored for a session, or None if there is no such session."""
    raw = await conn.fetchval("SELECT scenario FROM sessions WHERE session_id = $1", session_id)
    if raw is None:
        return None
    return parse_scenario(msgspec.json.decode(raw), source=f"session {session_id}")


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One stored session with its run counts."""

    session_id: UUID
    name: str
    created_at: datetime
    items: int
    sellers: int
    negotiations: int
    deals: int


# A run (alias r) is interrupted: running in the log, no live broker serving it (its run
# was killed). Owners and liveness: storage.leases, migration 0007.
_INTERRUPTED = """r.status = 'running' AND NOT EXISTS (
    SELECT 1 FROM room_owners w
    WHERE w.negotiation_id = r.negotiation_id AND mams_broker_alive(w.owner)
)"""


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """One negotiation run with its outcome (if ended)."""

    negotiation_id: UUID
    session_id: UUID
    item_name: str
    status: str
    brain: str | None
    rounds: int
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    seller: str | None
    unit_price: Decimal | None
    quantity: int | None
    total: Decimal | None
    # Running in the log with no live broker serving it (its run was killed): goes on
    # with `mams run --session ID --resume` (or `mams broker`). False unless running.
    interrupted: bool = False


async def list_sessions(conn: Conn, *, limit: int = 50) -> list[SessionRow]:
    """Stored sessions, newest first."""
    rows = await conn.fetch(
        """
        SELECT s.session_id, coalesce(s.name, '') AS name, s.created_at,
               (SELECT count(*) FROM buyer_configs b WHERE b.session_id = s.session_id) AS items,
               (SELECT count(*) FROM seller_configs c WHERE c.session_id = s.session_id)
                   AS sellers,
               (SELECT count(*) FROM negotiation_runs r WHERE r.session_id = s.session_id)
                   AS negotiations,
               (SELECT count(*) FROM negotiation_runs r JOIN outcomes o USING (negotiation_id)
                 WHERE r.session_id = s.session_id AND o.type = 'deal') AS deals
        FROM sessions s ORDER BY s.created_at DESC LIMIT $1
        """,
        limit,
    )
    return [SessionRow(**dict(r)) for r in rows]


async def list_runs(conn: Conn, *, session_id: UUID | None = None, limit: int = 50) -> list[RunRow]:
    """Negotiation runs with outcomes, newest first, optionally for one session."""
    rows = await conn.fetch(
        f"""
        SELECT r.negotiation_id, r.session_id, r.item_name, r.status, r.brain, r.rounds,
               r.started_at, r.ended_at, o.type AS outcome, o.seller, o.unit_price,
               o.quantity, o.total,
               {_INTERRUPTED} AS interrupted
        FROM negotiation_runs r LEFT JOIN outcomes o USING (negotiation_id)
        WHERE $1::uuid IS NULL OR r.session_id = $1
        ORDER BY r.started_at DESC, r.negotiation_id LIMIT $2
        """,
        session_id,
        limit,
    )
    return [RunRow(**dict(r)) for r in rows]


async def interrupted_by_session(conn: Conn, session_id: UUID | None = None) -> dict[UUID, int]:
    """Per session (or for one), how many of its rooms are interrupted: running in the log
    with no live broker serving them (their run was killed; `mams run --resume` goes on)."""
    rows = await conn.fetch(
        f"""
        SELECT r.session_id, count(*) AS n FROM negotiation_runs r
        WHERE {_INTERRUPTED} AND ($1::uuid IS NULL OR r.session_id = $1)
        GROUP BY r.session_id ORDER BY r.session_id
        """,
        session_id,
    )
    return {r["session_id"]: int(r["n"]) for r in rows}


async def find_negotiation(conn: Conn, prefix: str) -> list[UUID]:
    """Negotiation ids starting with a (hex) prefix, so people can type short ids."""
    clean = prefix.strip().lower()
    rows = await conn.fetch(
        "SELECT DISTINCT stream_id FROM events WHERE stream_id::text LIKE $1 || '%' LIMIT 5", clean
    )
    return [r["stream_id"] for r in rows]
