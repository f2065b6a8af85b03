"""Read models: the seed's tables, kept in step with the log.

`ReadModelProjector` computes the rows; the event store writes them in the statement that
appends the events (`mams_append`), so a row exists exactly when the events behind it are
committed. Session configurations are written once by
`save_session` and serve any number of later runs (`load_session`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, get_args
from uuid import UUID

import asyncpg
import msgspec

from mams.domain.config import Scenario, parse_scenario, scenario_to_raw
from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    NegotiationEnded,
    NegotiationStarted,
    RoundOpened,
    SellerReplied,
    decode_event,
)
from mams.domain.opening import scenario_of
from mams.domain.visibility import MessageEvent, told
from mams.storage.errors import translating
from mams.storage.model import NewEvent

_json = msgspec.json.Encoder(decimal_format="string")
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
# Whatever runs a query: a pool (one connection per call) or a connection of one.
Queries = asyncpg.Pool | Conn


# The event types with read-model rows: a room's opening (negotiation_runs), its rounds,
# its end (negotiation_runs and outcomes) and every message event (a `messages` row each,
# keyed by room and seq; a message id is unique within its room only: migration 0009).
_OPENING = str(NegotiationStarted.__struct_config__.tag)
_MESSAGES = frozenset(str(t.__struct_config__.tag) for t in get_args(MessageEvent))
_PROJECTED = (
    frozenset(
        str(t.__struct_config__.tag) for t in (NegotiationStarted, RoundOpened, NegotiationEnded)
    )
    | _MESSAGES
)

# How many rooms' casts (agent ids, the buyer first: under 1 kB for ten sellers) a
# projector remembers, the least recently used forgotten first; a room is forgotten once
# it ends. A message of a room it does not remember costs the store a read of the room's
# first event (after a broker's restart, once per room), in a round trip of its own.
ROOMS_REMEMBERED = 10_000

# Reads the first events of some streams: {stream_id: that event's data}, absent streams
# left out (`PostgresEventStore` passes its own).
ReadFirst = Callable[[Sequence[UUID]], Awaitable[Mapping[UUID, bytes]]]


class ReadModelProjector:
    """Projects committed events into negotiation_runs, messages and outcomes.

    `rows` turns a batch into the rows `mams_append` (migration 0010) writes in the same
    statement as the events, for those events it actually inserted. Every row comes from
    the typed events (`decode_event`), in this one place. A message row's sender and
    recipients need the room's opening (who the buyer and the sellers are): from the
    batch, from the projector's memory of the rooms it projected, or else the stream's
    first event, read through `read_first`. Who receives a message is the visibility
    policy's own rule (`domain.visibility.told`).
    """

    def __init__(self) -> None:
        self._casts: dict[UUID, tuple[str, ...]] = {}  # room -> agent ids, buyer first

    async def rows(self, events: Sequence[NewEvent], read_first: ReadFirst) -> bytes:
        """The read-model rows of a batch, as the JSON document `mams_append` takes.

        A message of a room whose opening is nowhere (its stream does not begin with a
        negotiation.started) gets no row, as a room without a run row had none before."""
        # What this batch needs, taken from memory now: other batches' projections while
        # the read below awaits may forget rooms, never change this batch's rows.
        opened = {e.stream_id for e in events if e.type == _OPENING}
        wanted = {e.stream_id for e in events if e.type in _MESSAGES} - opened
        known = {n: cast for n in wanted if (cast := self._recall(n)) is not None}
        if missing := [n for n in wanted if n not in known]:
            for nid, data in (await read_first(missing)).items():
                first = decode_event(data)
                if isinstance(first, NegotiationStarted):
                    known[nid] = self._remember(nid, first)
        return self._rows(events, known)

    def _rows(self, events: Sequence[NewEvent], casts: dict[UUID, tuple[str, ...]]) -> bytes:
        runs: list[dict[str, Any]] = []
        rounds: list[dict[str, Any]] = []
        messages: list[_MessageRow] = []
        ends: list[dict[str, Any]] = []
        outcomes: list[dict[str, Any]] = []
        ended: list[UUID] = []
        for stored in events:
            if stored.type not in _PROJECTED:
                continue  # rounds closing, private events; observations stay in their stream
            nid, e_id = stored.stream_id, stored.event_id
            match decode_event(stored.data):
                case BuyerSaid() | SellerReplied() | DealClosed() | BuyerWalkedAway() as e:
                    cast = casts.get(nid)  # the most frequent case first
                    if cast is not None:
                        messages.append(_message_row(cast, e, e_id, nid, stored.seq))
                case NegotiationStarted() as e:
                    casts[nid] = self._remember(nid, e)
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
                    ended.append(nid)
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
        for nid in ended:  # no more messages; a late re-append reads the opening again
            self._casts.pop(nid, None)
        tables = {
            "runs": runs,
            "rounds": rounds,
            "messages": messages,
            "ends": ends,
            "outcomes": outcomes,
        }
        present = {name: rows for name, rows in tables.items() if rows}  # mams_append skips
        return _json.encode(present)

    def _recall(self, nid: UUID) -> tuple[str, ...] | None:
        cast = self._casts.pop(nid, None)
        if cast is not None:
            self._casts[nid] = cast  # most recently used last
        return cast

    def _remember(self, nid: UUID, opening: NegotiationStarted) -> tuple[str, ...]:
        casts = self._casts
        casts.pop(nid, None)
        cast = casts[nid] = (opening.buyer.agent_id, *(s.agent_id for s in opening.sellers))
        while len(casts) > ROOMS_REMEMBERED:
            del casts[next(iter(casts))]  # the least recently used
        return cast


class _MessageRow(msgspec.Struct, gc=False):
    """A `messages` row in the projector's document: its field names are the columns
    mams_append's recordset reads (tests/storage/test_projection.py checks they agree)."""

    e: UUID  # the event it comes from
    nid: UUID
    seq: int
    mid: UUID
    round: int
    sender: str
    to: tuple[str, ...]
    text: str
    price: Decimal | None = None
    qty: int | None = None


def _message_row(
    cast: tuple[str, ...], event: MessageEvent, e_id: UUID, nid: UUID, seq: int
) -> _MessageRow:
    """A message event's `messages` row: who said it (the seller replying, else the
    buyer: `cast[0]`), who it is for (`told`), its words and any price and quantity."""
    row = _MessageRow(
        e=e_id,
        nid=nid,
        seq=seq,
        mid=event.message_id,
        round=event.round,
        sender=cast[0],
        to=told(cast, event),
        text=event.text,
    )
    match event:
        case BuyerSaid(counter_price=counter):
            row.price = counter
        case SellerReplied(seller=seller, offer=offer):
            row.sender = seller
            if offer is not None:
                row.price, row.qty = offer.unit_price, offer.quantity
        case DealClosed(unit_price=unit_price, quantity=qty):
            row.price, row.qty = unit_price, qty
        case BuyerWalkedAway():
            pass
    return row


async def save_session(conn: Conn, session_id: UUID, scenario: Scenario) -> None:
    """Store a scenario as a session (its JSON plus the normalized config tables)."""
    raw = _json.encode(scenario_to_raw(scenario)).decode()
    with translating():
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO sessions (session_id, name, scenario) VALUES ($1, $2, $3)",
                session_id,
                scenario.name,
                raw,
            )
            await conn.executemany(
                "INSERT INTO buyer_configs "
                "(session_id, item_name, quantity, min_price, max_price) "
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
                    (
                        session_id,
                        s.handle,
                        e.item_name,
                        e.cost_price,
                        e.selling_price,
                        e.least_price,
                    )
                    for s in scenario.sellers
                    for e in s.inventory
                ],
            )


async def has_session(conn: Queries, session_id: UUID) -> bool:
    """Whether a session is stored."""
    with translating():
        found = await conn.fetchval("SELECT 1 FROM sessions WHERE session_id = $1", session_id)
    return bool(found)


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


async def load_session(conn: Queries, session_id: UUID) -> Scenario | None:
    """The scenario stored for a session, or None if there is no such session."""
    with translating():
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


async def list_sessions(conn: Queries, *, limit: int = 50) -> list[SessionRow]:
    """Stored sessions, newest first."""
    with translating():
        rows = await conn.fetch(
            """
            SELECT s.session_id, coalesce(s.name, '') AS name, s.created_at,
                   (SELECT count(*) FROM buyer_configs b WHERE b.session_id = s.session_id)
                       AS items,
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


async def list_runs(
    conn: Queries, *, session_id: UUID | None = None, limit: int = 50
) -> list[RunRow]:
    """Negotiation runs with outcomes, newest first, optionally for one session."""
    with translating():
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


async def interrupted_by_session(conn: Queries, session_id: UUID | None = None) -> dict[UUID, int]:
    """Per session (or for one), how many of its rooms are interrupted: running in the log
    with no live broker serving them (their run was killed; `mams run --resume` goes on)."""
    with translating():
        rows = await conn.fetch(
            f"""
            SELECT r.session_id, count(*) AS n FROM negotiation_runs r
            WHERE {_INTERRUPTED} AND ($1::uuid IS NULL OR r.session_id = $1)
            GROUP BY r.session_id ORDER BY r.session_id
            """,
            session_id,
        )
    return {r["session_id"]: int(r["n"]) for r in rows}


async def find_negotiation(conn: Queries, prefix: str) -> list[UUID]:
    """Negotiation ids starting with a (hex) prefix, so people can type short ids."""
    clean = prefix.strip().lower()
    with translating():
        rows = await conn.fetch(
            "SELECT DISTINCT stream_id FROM events WHERE stream_id::text LIKE $1 || '%' LIMIT 5",
            clean,
        )
    return [r["stream_id"] for r in rows]


# -- the queries of the commands and the broker: all SQL stays in storage/, each call
# through `translating`, so a lost database is a DatabaseUnavailable naming what to do.


async def database_now(db: Queries) -> datetime:
    """The database's clock (`now()`): compare with times it stamped, not with ours."""
    with translating():
        now: datetime = await db.fetchval("SELECT now()")
    return now


async def count_sessions(db: Queries) -> int:
    """How many sessions are stored."""
    with translating():
        return int(await db.fetchval("SELECT count(*) FROM sessions"))


async def count_runs(db: Queries, session_id: UUID | None = None) -> int:
    """How many negotiation runs are stored (of one session, if given)."""
    with translating():
        n = await db.fetchval(
            "SELECT count(*) FROM negotiation_runs WHERE $1::uuid IS NULL OR session_id = $1",
            session_id,
        )
    return int(n)


async def negotiation_ids(db: Queries, session_id: UUID | None = None) -> list[UUID]:
    """The stored runs' negotiation ids (of one session, if given), in the order they
    started (then by item name)."""
    with translating():
        rows = await db.fetch(
            "SELECT negotiation_id FROM negotiation_runs "
            "WHERE $1::uuid IS NULL OR session_id = $1 "
            "ORDER BY started_at, item_name, negotiation_id",
            session_id,
        )
    return [r["negotiation_id"] for r in rows]


async def session_negotiation_ids(db: Queries, session_id: UUID) -> list[UUID]:
    """A session's negotiation ids in the order they started (then by id)."""
    with translating():
        rows = await db.fetch(
            "SELECT negotiation_id FROM negotiation_runs WHERE session_id = $1 "
            "ORDER BY started_at, negotiation_id",
            session_id,
        )
    return [r["negotiation_id"] for r in rows]


async def runs_started_since(
    db: Queries, session_id: UUID, since: datetime, also: Sequence[UUID] = ()
) -> list[tuple[UUID, str]]:
    """(negotiation id, item name) of a session's runs started at or after `since`, plus
    those of `also` (rooms gone on with), in the order they started (then by item)."""
    with translating():
        rows = await db.fetch(
            "SELECT negotiation_id, item_name FROM negotiation_runs WHERE session_id = $1 "
            "AND (started_at >= $2 OR negotiation_id = ANY($3::uuid[])) "
            "ORDER BY started_at, item_name",
            session_id,
            since,
            list(also),
        )
    return [(r["negotiation_id"], r["item_name"]) for r in rows]


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    """Where a stored run stands: its room, item, seed and status."""

    negotiation_id: UUID
    item_name: str
    seed: int | None
    status: str


async def run_states(
    db: Queries, session_id: UUID, statuses: Sequence[str] = ("completed", "running")
) -> list[RunState]:
    """A session's runs of these statuses, in the order they started."""
    with translating():
        rows = await db.fetch(
            "SELECT negotiation_id, item_name, seed, status FROM negotiation_runs "
            "WHERE session_id = $1 AND status = ANY($2::text[]) ORDER BY started_at",
            session_id,
            list(statuses),
        )
    return [RunState(**dict(r)) for r in rows]


async def finished_runs(db: Queries, negotiation_id: UUID | None = None) -> dict[UUID, bool]:
    """Every stored run (or the one given): whether it is finished (no longer running)."""
    with translating():
        rows = await db.fetch(
            "SELECT negotiation_id, status <> 'running' AS finished FROM negotiation_runs "
            "WHERE $1::uuid IS NULL OR negotiation_id = $1",
            negotiation_id,
        )
    return {r["negotiation_id"]: bool(r["finished"]) for r in rows}


class SessionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored session as an archive keeps it: its name, time and scenario JSON."""

    session_id: UUID
    name: str | None
    created_at: datetime
    scenario: bytes  # its JSON


async def sessions_of_runs(db: Queries, negotiation_ids: Sequence[UUID]) -> list[SessionRecord]:
    """The sessions these runs belong to, oldest first."""
    with translating():
        rows = await db.fetch(
            "SELECT session_id, name, created_at, scenario FROM sessions WHERE session_id "
            "IN (SELECT session_id FROM negotiation_runs WHERE negotiation_id = ANY($1))"
            " ORDER BY created_at, session_id",
            list(negotiation_ids),
        )
    return [SessionRecord(**dict(r)) for r in rows]


async def restamp_session(db: Queries, session_id: UUID, created_at: datetime) -> None:
    """Give a stored session the time it had where it came from (an imported archive)."""
    with translating():
        await db.execute(
            "UPDATE sessions SET created_at = $2 WHERE session_id = $1", session_id, created_at
        )


async def rename_session(
    db: Queries, session_id: UUID, name: str | None, created_at: datetime
) -> None:
    """Give a stored session the name and time it had where it came from."""
    with translating():
        await db.execute(
            "UPDATE sessions SET name = $2, created_at = $3 WHERE session_id = $1",
            session_id,
            name,
            created_at,
        )


async def save_plan(db: Queries, session_id: UUID, plan: bytes) -> None:
    """Record a run's plan (JSON) as the session's newest."""
    with translating():
        await db.execute(
            "INSERT INTO studies (study_id, session_id, plan) VALUES ($1, $2, $3)",
            uuid.uuid4(),
            session_id,
            plan,
        )


async def last_plan(db: Queries, session_id: UUID) -> tuple[bytes, datetime] | None:
    """The session's newest plan (JSON) and when it was made, or None if none was saved."""
    with translating():
        row = await db.fetchrow(
            "SELECT plan, created_at FROM studies WHERE session_id = $1 "
            "ORDER BY created_at DESC, study_id LIMIT 1",
            session_id,
        )
    if row is None:
        return None
    return row["plan"], row["created_at"]
