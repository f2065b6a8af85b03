"""The read-model projection is Python's alone (migration 0010): `mams_append` writes the
rows the projector computed from the typed events, and reads no event field by name.

- For every kind of message the rows are the ones the old `mams_append` (0006, which read
  the events' JSON in SQL) wrote, whether the batch opens the room, the projector
  remembers it, or it must read the room's first event (a restarted broker).
- Every field of every message event lands in its column: a field renamed or added in
  `domain/events.py` fails here, as does a key of the projector's document that the SQL
  reads under another name (it would be NULL).
- A room's cast is read from the log only when the projector does not remember it (one
  round trip per batch otherwise).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any, get_args

import asyncpg
import msgspec
import pytest

from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    Offer,
    SellerReplied,
    decode_event,
    encode_event,
    event_type,
)
from mams.domain.messages import Say, WalkAway
from mams.domain.visibility import MessageEvent
from mams.storage.eventstore import PostgresEventStore
from mams.storage.migrate import available
from mams.storage.model import NewEvent
from mams.storage.pg import create_pool
from mams.storage.readmodels import ReadModelProjector
from tests.domain.helpers import NID, Room, buyer_turn, seller_turn
from tests.storage.test_readmodels import add_session, negotiation, same_messages_in

D = Decimal
Pools = tuple[asyncpg.Pool, asyncpg.Pool]


def walk_away() -> list[NewEvent]:
    """A room the buyer leaves in round 2, after a counter to two sellers."""
    room = Room()
    room.ok(buyer_turn(1, Say(text="Price for 2?")))
    room.ok(seller_turn("alpha", 1, "$14", "14.00", quantity=1))
    room.ok(seller_turn("beta", 1, "no stock"))
    room.ok(seller_turn("gamma", 1, "$15", "15.00"))
    room.ok(buyer_turn(2, Say(text="$9?", to=("alpha", "gamma"), counter_price=D("9.00"))))
    room.ok(seller_turn("alpha", 2, "no"))
    room.ok(seller_turn("gamma", 2, "$13", "13.00"))
    room.ok(buyer_turn(3, WalkAway(text="Too dear, bye")))
    assert room.state.phase == "ended"
    return [
        NewEvent(NID, seq, uuid.uuid4(), event_type(e), encode_event(e))
        for seq, e in enumerate(room.events, 1)
    ]


def rooms() -> list[list[NewEvent]]:
    """A deal and a walk-away, each in a room of its own: every kind of message."""
    return [
        same_messages_in(uuid.uuid4(), negotiation()),
        same_messages_in(uuid.uuid4(), walk_away()),
    ]


async def migrated_pool(database_url: str, schema: str, *, below: str | None) -> asyncpg.Pool:
    """A pool on `schema`, migrated (only to the versions before `below`, if given)."""
    pool = await create_pool(database_url, schema=schema)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in available():
            if below is None or version < below:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", version)
    await add_session(pool)
    return pool


@pytest.fixture
async def old_and_new(database_url: str, pg_schema: str) -> AsyncIterator[Pools]:
    """A database at 0009 (the old mams_append, messages derived in SQL) and one with
    every migration, each in its own schema."""
    old_schema = f"{pg_schema}_old"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE SCHEMA "{old_schema}"')
    old = new = None
    try:
        old = await migrated_pool(database_url, old_schema, below="0010")
        new = await migrated_pool(database_url, pg_schema, below=None)
        yield old, new
    finally:
        for pool in (old, new):
            if pool is not None:
                await pool.close()
        await conn.execute(f'DROP SCHEMA "{old_schema}" CASCADE')
        await conn.close()


_MESSAGE_ROWS = (
    "SELECT negotiation_id, seq, message_id, round, sender, recipients, text,"
    " offer_unit_price, offer_quantity FROM messages ORDER BY negotiation_id, seq"
)


async def message_rows(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    return [tuple(r.values()) for r in await pool.fetch(_MESSAGE_ROWS)]


def batches(events: Sequence[NewEvent], how: str) -> list[list[NewEvent]]:
    if how == "one-batch":
        return [list(events)]
    if how == "each-alone":
        return [[e] for e in events]
    return [list(events[:1]), list(events[1:5]), list(events[5:])]  # "restarted"


@pytest.mark.parametrize("how", ["one-batch", "each-alone", "restarted"])
async def test_message_rows_are_the_ones_the_sql_projection_wrote(
    old_and_new: Pools, how: str
) -> None:
    # "restarted": each batch after a room's first goes through a new store and
    # projector, which remembers no room and reads the room's first event from the log.
    old, new = old_and_new
    for events in rooms():
        stores = {pool: PostgresEventStore(pool, ReadModelProjector()) for pool in (old, new)}
        for batch in batches(events, how):
            for pool in (old, new):
                if how == "restarted":
                    stores[pool] = PostgresEventStore(pool, ReadModelProjector())
                await stores[pool].append(batch)
    written = await message_rows(new)
    assert written == await message_rows(old)
    # Both rooms, every message event: the deal room's 7, the walk-away's 8.
    assert len(written) == 15
    walked = [r for r in written if r[6] == "Too dear, bye"]
    assert [r[3:] for r in walked] == [
        (3, "buyer", ["alpha", "beta", "gamma"], "Too dear, bye", None, None)
    ]


async def test_a_message_without_its_room_opening_gets_no_row(
    database_url: str, pg_schema: str
) -> None:
    # As before (the old SQL joined negotiation_runs): a stream that opens no room.
    pool = await migrated_pool(database_url, pg_schema, below=None)
    try:
        events = negotiation()
        store = PostgresEventStore(pool, ReadModelProjector())
        stray = uuid.uuid4()
        await store.append(
            [NewEvent(stray, e.seq, uuid.uuid4(), e.type, e.data) for e in events[2:4]]
        )
        assert await message_rows(pool) == []
    finally:
        await pool.close()


# Each message event's fields, and where each lands in its `messages` row (the row's value
# that must equal the event's). A field added to, or renamed in, a message event in
# domain/events.py fails the test below until its projection is decided here.
Column = Callable[[asyncpg.Record], Any]
_WHERE: dict[type[Any], dict[str, Column]] = {
    BuyerSaid: {
        "round": lambda r: r["round"],
        "message_id": lambda r: r["message_id"],
        "to": lambda r: tuple(r["recipients"]),
        "text": lambda r: r["text"],
        "counter_price": lambda r: r["offer_unit_price"],
    },
    SellerReplied: {
        "round": lambda r: r["round"],
        "message_id": lambda r: r["message_id"],
        "seller": lambda r: r["sender"],
        "text": lambda r: r["text"],
        "offer": lambda r: (
            None
            if r["offer_unit_price"] is None
            else Offer(unit_price=r["offer_unit_price"], quantity=r["offer_quantity"])
        ),
    },
    DealClosed: {
        "round": lambda r: r["round"],
        "message_id": lambda r: r["message_id"],
        "seller": lambda r: r["recipients"][0] if len(r["recipients"]) == 1 else r["recipients"],
        "unit_price": lambda r: r["offer_unit_price"],
        "quantity": lambda r: r["offer_quantity"],
        "text": lambda r: r["text"],
    },
    BuyerWalkedAway: {
        "round": lambda r: r["round"],
        "message_id": lambda r: r["message_id"],
        "text": lambda r: r["text"],
    },
}


async def test_every_field_of_every_message_event_reaches_its_column(
    db: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    pool, store = db
    await add_session(pool)
    stored: list[tuple[NewEvent, Event]] = []
    for events in rooms():
        await store.append(events)
        stored += [(e, decode_event(e.data)) for e in events]
    rows = {(r["negotiation_id"], r["seq"]): r for r in await pool.fetch("SELECT * FROM messages")}
    kinds = get_args(MessageEvent)
    assert set(kinds) == set(_WHERE)
    for kind in kinds:
        fields = {f.name for f in msgspec.structs.fields(kind)}
        assert fields == set(_WHERE[kind]), f"{kind.__name__}: fields {fields}"
        sample = [(e, event) for e, event in stored if isinstance(event, kind)]
        assert sample, kind.__name__
        for name, column in _WHERE[kind].items():
            values = [getattr(event, name) for _, event in sample]
            # The rooms exercise each field with a value (a counter, an offer, ...).
            assert any(v not in (None, (), "") for v in values), (kind.__name__, name)
            for e, event in sample:
                row = rows[e.stream_id, e.seq]
                assert column(row) == getattr(event, name), (kind.__name__, name, dict(row))
    # No other event has a message row.
    assert len(rows) == sum(isinstance(event, kinds) for _, event in stored)


_RECORDSET = re.compile(r"jsonb_to_recordset\(models->'(\w+)'\) AS r\(([^)]*)\)")


async def test_the_projector_writes_the_keys_mams_append_reads(
    db: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    # jsonb_to_recordset takes a missing key as NULL and ignores an unknown one: a key
    # renamed on one side only would empty a column without an error.
    pool, _ = db
    source = await pool.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'mams_append'"
        " AND pronamespace = current_schema()::regnamespace"
    )
    reads = {
        table: {c.split()[0].strip('"') for c in columns.split(",")}
        for table, columns in _RECORDSET.findall(source)
    }

    async def no_reads(_: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        raise AssertionError("every room opens in the batch")

    events = [e for room in rooms() for e in room]
    document = msgspec.json.decode(await ReadModelProjector().rows(events, no_reads))
    assert set(document) == set(reads) == {"runs", "rounds", "messages", "ends", "outcomes"}
    for table, rows in document.items():
        for row in rows:
            assert set(row) == reads[table], table


class Reads:
    """A `read_first` over a fixed log, counting the reads."""

    def __init__(self, events: Sequence[NewEvent]) -> None:
        self.first = {e.stream_id: e.data for e in events if e.seq == 1}
        self.asked: list[list[uuid.UUID]] = []

    async def __call__(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        self.asked.append(list(ids))
        return {i: self.first[i] for i in ids if i in self.first}


async def test_a_room_is_read_once_then_remembered_until_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deal, walk = rooms()
    reads = Reads(deal + walk)
    projector = ReadModelProjector()
    # The batch opens the room: nothing read, then or for the room's next batches.
    await projector.rows(deal[:1], reads)
    await projector.rows(deal[1:5], reads)
    assert reads.asked == []
    # A projector new to the room (a restarted broker) reads its first event once.
    fresh = ReadModelProjector()
    document = msgspec.json.decode(await fresh.rows(walk[2:5], reads))
    assert reads.asked == [[walk[0].stream_id]]
    assert [m["sender"] for m in document["messages"]] == ["buyer", "alpha"]
    await fresh.rows(walk[5:8], reads)
    assert len(reads.asked) == 1
    # Once the room ended it is forgotten: a late re-append reads it again.
    await fresh.rows(walk[8:], reads)
    await fresh.rows(walk[2:3], reads)
    assert len(reads.asked) == 2
    # Only so many rooms are remembered, the least recently used forgotten first.
    monkeypatch.setattr("mams.storage.readmodels.ROOMS_REMEMBERED", 1)
    bounded = ReadModelProjector()
    await bounded.rows(deal[:1], reads)
    await bounded.rows(walk[:1], reads)
    await bounded.rows(deal[2:3], reads)
    assert reads.asked[2:] == [[deal[0].stream_id]]
