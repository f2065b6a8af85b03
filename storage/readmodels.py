"""Read models: the seed's tables, kept in step with the log.

`ReadModelProjector` runs inside the event append's transaction, so a row exists exactly
when the events behind it are committed. Session configurations are written once by
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
    OBSERVATION_TAGS,
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    NegotiationEnded,
    NegotiationStarted,
    RoundOpened,
    SellerReplied,
    decode_event,
)
from mams.storage.model import NewEvent

_json = msgspec.json.Encoder(decimal_format="string")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_INSERT_RUN = """
INSERT INTO negotiation_runs (negotiation_id, session_id, item_name, status, brain, max_rounds,
                              seed, rounds, buyer, sellers)
VALUES ($1, $2, $3, 'running', $4, $5, $6, 0, $7, $8)
ON CONFLICT (negotiation_id) DO NOTHING
"""
_INSERT_MESSAGE = """
INSERT INTO messages (negotiation_id, seq, message_id, round, sender, recipients, text,
                      offer_unit_price, offer_quantity)
SELECT $1, $2, $3, $4, COALESCE($5, r.buyer, 'buyer'), COALESCE($6, r.sellers), $7, $8, $9
FROM negotiation_runs r WHERE r.negotiation_id = $1
ON CONFLICT DO NOTHING
"""
_ROUNDS = "UPDATE negotiation_runs SET rounds = GREATEST(rounds, $2) WHERE negotiation_id = $1"
_END_RUN = """
UPDATE negotiation_runs SET status = $2, rounds = $3, ended_at = now() WHERE negotiation_id = $1
"""
_INSERT_OUTCOME = """
INSERT INTO outcomes (negotiation_id, type, seller, unit_price, quantity, total, rounds)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (negotiation_id) DO NOTHING
"""


class ReadModelProjector:
    """Projects committed events into negotiation_runs, messages and outcomes."""

    async def project(self, conn: Conn, events: Sequence[NewEvent]) -> None:
        """Write the rows for a batch of events, inside the caller's transaction."""
        runs: list[tuple[Any, ...]] = []
        rounds: list[tuple[Any, ...]] = []
        messages: list[tuple[Any, ...]] = []
        ends: list[tuple[Any, ...]] = []
        outcomes: list[tuple[Any, ...]] = []
        for stored in events:
            if stored.type in OBSERVATION_TAGS:
                continue  # observations have no read model; they stay in their stream
            nid = stored.stream_id
            match decode_event(stored.data):
                case NegotiationStarted() as e:
                    brains = sorted({e.buyer.brain, *(s.brain for s in e.sellers)})
                    runs.append(
                        (
                            nid,
                            e.session_id,
                            e.item_name,
                            " / ".join(brains),
                            e.max_rounds,
                            e.seed,
                            e.buyer.agent_id,
                            [s.agent_id for s in e.sellers],
                        )
                    )
                case RoundOpened(round=n):
                    rounds.append((nid, n))
                case BuyerSaid() as e:
                    messages.append(
                        (
                            nid,
                            stored.seq,
                            e.message_id,
                            e.round,
                            None,
                            list(e.to),
                            e.text,
                            e.counter_price,
                            None,
                        )
                    )
                case SellerReplied() as e:
                    offer = e.offer
                    messages.append(
                        (
                            nid,
                            stored.seq,
                            e.message_id,
                            e.round,
                            e.seller,
                            None,
                            e.text,
                            offer.unit_price if offer else None,
                            offer.quantity if offer else None,
                        )
                    )
                case DealClosed() as e:
                    messages.append(
                        (
                            nid,
                            stored.seq,
                            e.message_id,
                            e.round,
                            None,
                            [e.seller],
                            e.text,
                            e.unit_price,
                            e.quantity,
                        )
                    )
                case BuyerWalkedAway() as e:
                    messages.append(
                        (nid, stored.seq, e.message_id, e.round, None, None, e.text, None, None)
                    )
                case NegotiationEnded(status=status, outcome=o):
                    ends.append((nid, status, o.rounds))
                    outcomes.append(
                        (nid, o.type, o.seller, o.unit_price, o.quantity, o.total, o.rounds)
                    )
                case _:
                    pass
        # Order matters: runs exist before their messages, outcomes after their runs.
        for sql, rows in (
            (_INSERT_RUN, runs),
            (_ROUNDS, rounds),
            (_INSERT_MESSAGE, messages),
            (_END_RUN, ends),
            (_INSERT_OUTCOME, outcomes),
        ):
            if rows:
                await conn.executemany(sql, rows)


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
        """
        SELECT r.negotiation_id, r.session_id, r.item_name, r.status, r.brain, r.rounds,
               r.started_at, r.ended_at, o.type AS outcome, o.seller, o.unit_price,
               o.quantity, o.total
        FROM negotiation_runs r LEFT JOIN outcomes o USING (negotiation_id)
        WHERE $1::uuid IS NULL OR r.session_id = $1
        ORDER BY r.started_at DESC, r.negotiation_id LIMIT $2
        """,
        session_id,
        limit,
    )
    return [RunRow(**dict(r)) for r in rows]


async def find_negotiation(conn: Conn, prefix: str) -> list[UUID]:
    """Negotiation ids starting with a (hex) prefix, so people can type short ids."""
    clean = prefix.strip().lower()
    rows = await conn.fetch(
        "SELECT DISTINCT stream_id FROM events WHERE stream_id::text LIKE $1 || '%' LIMIT 5", clean
    )
    return [r["stream_id"] for r in rows]
