"""The read models are written with the events, by the same statement (`mams_append`):
rows exist exactly for committed events, re-appends project nothing, and a failing row
rolls the events back."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import msgspec
import pytest

from mams.domain.events import NegotiationStarted, decode_event, encode_event, event_type
from mams.domain.messages import Accept, Say
from mams.storage.errors import StorageError
from mams.storage.eventstore import PostgresEventStore
from mams.storage.migrate import available, migrate
from mams.storage.model import NewEvent
from mams.storage.pg import create_pool
from mams.storage.readmodels import ReadModelProjector
from tests.domain.helpers import NID, SID, Room, buyer_turn, seller_turn

D = Decimal


def negotiation() -> list[NewEvent]:
    """A deal in round 3: everyone asked, two offers, a counter to @Beta, then a deal."""
    room = Room()
    room.ok(buyer_turn(1, Say(text="Best price for 2?")))
    room.ok(seller_turn("alpha", 1, "$12 each", "12.00"))
    room.ok(seller_turn("beta", 1, "$13 each", "13.00"))
    room.ok(seller_turn("gamma", 1, "sold out"))
    room.ok(buyer_turn(2, Say(text="$10?", to=("beta",), counter_price=D("10.00"))))
    room.ok(seller_turn("beta", 2, "$11 then", "11.00"))
    room.ok(buyer_turn(3, Accept(seller="beta", unit_price=D("11.00"), quantity=2, text="Deal")))
    assert room.state.phase == "ended"
    return [
        NewEvent(NID, seq, uuid.uuid4(), event_type(e), encode_event(e))
        for seq, e in enumerate(room.events, 1)
    ]


async def add_session(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO sessions (session_id, name, scenario) VALUES ($1, 't', '{}')", SID
    )


async def snapshot(pool: asyncpg.Pool) -> tuple[list[tuple[object, ...]], ...]:
    runs = await pool.fetch(
        "SELECT negotiation_id, session_id, item_name, status, brain, max_rounds, seed, rounds,"
        " buyer, sellers, ended_at FROM negotiation_runs"
    )
    messages = await pool.fetch(
        "SELECT seq, round, sender, recipients, text, offer_unit_price, offer_quantity"
        " FROM messages ORDER BY seq"
    )
    outcomes = await pool.fetch(
        "SELECT type, seller, unit_price, quantity, total, rounds, decided_at FROM outcomes"
    )
    return tuple([tuple(r.values()) for r in rows] for rows in (runs, messages, outcomes))


@pytest.mark.parametrize("cut", [1, 3, 0], ids=["started-alone", "split", "one-batch"])
async def test_read_models_follow_the_log(
    db: tuple[asyncpg.Pool, PostgresEventStore], cut: int
) -> None:
    pool, store = db
    await add_session(pool)
    events = negotiation()
    if cut:
        await store.append(events[:cut])
        [(status, _rounds)] = await pool.fetch("SELECT status, rounds FROM negotiation_runs")
        assert status == "running"
    await store.append(events[cut:] if cut else events)

    runs, messages, outcomes = await snapshot(pool)
    [run] = runs
    assert run[:10] == (
        NID, SID, "iPhone 15 case", "completed", "baseline", 3, 7, 3, "buyer",
        ["alpha", "beta", "gamma"],
    )  # fmt: skip
    assert run[10] is not None  # ended_at
    assert [m[1:] for m in messages] == [
        (1, "buyer", ["alpha", "beta", "gamma"], "Best price for 2?", None, None),
        (1, "alpha", ["buyer"], "$12 each", D("12.00"), 2),
        (1, "beta", ["buyer"], "$13 each", D("13.00"), 2),
        (1, "gamma", ["buyer"], "sold out", None, None),
        (2, "buyer", ["beta"], "$10?", D("10.00"), None),
        (2, "beta", ["buyer"], "$11 then", D("11.00"), 2),
        (3, "buyer", ["beta"], "Deal", D("11.00"), 2),
    ]
    [outcome] = outcomes
    assert outcome[:6] == ("deal", "beta", D("11.00"), 2, D("22.00"), 3)

    # Appending the same events again changes no row (not even a timestamp).
    before = await snapshot(pool)
    await store.append(events)
    await PostgresEventStore(pool, ReadModelProjector()).append(events[2:])
    assert await snapshot(pool) == before


async def test_migration_0006_sends_the_rows_0005_wrote_for_seller_replies_to_the_buyer(
    database_url: str, pg_schema: str
) -> None:
    # A database at 0005 (its mams_append recorded a reply's recipients as every seller),
    # then migrated: the old rows are corrected, and new appends are right.
    pool = await create_pool(database_url, schema=pg_schema)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, sql in available():
                if version < "0006":
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1)", version)
        await add_session(pool)
        store = PostgresEventStore(pool, ReadModelProjector())
        events = negotiation()
        await store.append(events[:4])  # started, round 1, the ask, alpha's reply
        old = await pool.fetch("SELECT sender, recipients FROM messages ORDER BY seq")
        assert [tuple(r.values()) for r in old] == [
            ("buyer", ["alpha", "beta", "gamma"]),
            ("alpha", ["alpha", "beta", "gamma"]),  # what 0005 wrote
        ]
        async with pool.acquire() as conn:
            assert (await migrate(conn))[0] == "0006_reply_recipients"
        await store.append(events[4:])
        fixed = await pool.fetch("SELECT sender, recipients FROM messages ORDER BY seq")
        assert [tuple(r.values()) for r in fixed] == [
            ("buyer", ["alpha", "beta", "gamma"]),
            ("alpha", ["buyer"]),
            ("beta", ["buyer"]),
            ("gamma", ["buyer"]),
            ("buyer", ["beta"]),
            ("beta", ["buyer"]),
            ("buyer", ["beta"]),
        ]
    finally:
        await pool.close()


async def test_a_failing_read_model_row_rolls_the_events_back(
    db: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    # No session row: the run's foreign key fails, and the events go with it.
    pool, store = db
    events = negotiation()
    with pytest.raises(StorageError, match="negotiation_runs_session_id_fkey"):
        await store.append(events)
    assert await store.read(NID) == []
    assert await pool.fetchval("SELECT count(*) FROM negotiation_runs") == 0
    # Nothing was remembered either: with the session in place the same batch lands whole.
    await add_session(pool)
    await store.append(events)
    assert len(await store.read(NID)) == len(events)
    assert await pool.fetchval("SELECT count(*) FROM messages") == 7


def same_messages_in(nid: uuid.UUID, room: list[NewEvent]) -> list[NewEvent]:
    """`room` again in another room `nid`, its agents using the same message ids."""
    events: list[NewEvent] = []
    for e in room:
        event = decode_event(e.data)
        if isinstance(event, NegotiationStarted):
            event = msgspec.structs.replace(event, negotiation_id=nid)
        events.append(NewEvent(nid, e.seq, uuid.uuid4(), e.type, encode_event(event)))
    return events


async def message_rows(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT negotiation_id, seq, message_id, sender, text FROM messages"
        " ORDER BY negotiation_id, seq"
    )
    return [tuple(r.values()) for r in rows]


async def test_a_message_id_used_in_two_rooms_keeps_both_rows(
    db: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    pool, store = db
    await add_session(pool)
    other = uuid.uuid4()
    first = negotiation()
    second = same_messages_in(other, first)
    await store.append(first)
    await store.append(second)
    rows = await message_rows(pool)
    assert len(rows) == 14
    ours, theirs = ([r[1:] for r in rows if r[0] == nid] for nid in (NID, other))
    assert len(ours) == 7
    assert theirs == ours  # seq, message id, sender, text: row for row
    # Re-appending either room still writes nothing more.
    await store.append(second)
    assert len(await message_rows(pool)) == 14


async def test_migration_0009_brings_back_the_rows_0008_dropped(
    database_url: str, pg_schema: str
) -> None:
    # A database at 0008: the second room's message rows are dropped (message_id was
    # unique across the log). Migrated, they are written from the log, as mams_append
    # would have, and new rooms reusing ids keep theirs.
    pool = await create_pool(database_url, schema=pg_schema)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, sql in available():
                if version < "0009":
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1)", version)
        await add_session(pool)
        store = PostgresEventStore(pool, ReadModelProjector())
        first = negotiation()
        await store.append(first)
        before = await message_rows(pool)
        other = uuid.uuid4()
        await store.append(same_messages_in(other, first))
        assert await message_rows(pool) == before  # what 0008 kept: nothing of `other`
        async with pool.acquire() as conn:
            assert (await migrate(conn))[0] == "0009_messages_per_room"
        rows = await message_rows(pool)
        assert [r for r in rows if r[0] != other] == before
        theirs = [r[1:] for r in rows if r[0] == other]
        assert theirs == [r[1:] for r in before]
        # The brought-back rows are the ones mams_append writes: a third room (appended
        # after the migration) has the same rows, sent at when its events were committed.
        third = uuid.uuid4()
        await store.append(same_messages_in(third, first))
        full = await pool.fetch(
            "SELECT m.negotiation_id, m.seq, m.round, m.sender, m.recipients, m.text,"
            " m.offer_unit_price, m.offer_quantity, m.sent_at = e.recorded_at AS on_time"
            " FROM messages m JOIN events e ON e.stream_id = m.negotiation_id AND e.seq = m.seq"
            " ORDER BY m.seq"
        )
        by_room = {
            nid: [tuple(r.values())[1:] for r in full if r["negotiation_id"] == nid]
            for nid in (NID, other, third)
        }
        assert by_room[other] == by_room[third] == by_room[NID]
        assert all(r["on_time"] for r in full)
    finally:
        await pool.close()
