"""Leases on real PostgreSQL: a broker takes over only rooms whose broker is gone.

"Gone" is PostgreSQL's word, not a timer's: a broker is alive while its lock connection
is open, so these tests end brokers the ways processes end (close, a killed backend).
"""

from __future__ import annotations

import uuid
from uuid import UUID

import anyio
import asyncpg

from mams.actors.broker import Broker, open_stream_ids
from mams.actors.market import RunOptions
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import Subjects
from mams.storage.eventstore import PostgresEventStore
from mams.storage.leases import PgLeases, live_rooms
from mams.storage.readmodels import save_session
from tests.integration.helpers import started_for
from tests.integration.scenarios import phone

Db = tuple[asyncpg.Pool, PostgresEventStore]


async def start_and_stop(broker: Broker) -> None:
    """Serve, then stop at once (a broker that never ran leaves its queues open)."""
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        tg.cancel_scope.cancel()


def ids(n: int) -> list[UUID]:
    return [uuid.uuid4() for _ in range(n)]


async def test_a_live_brokers_rooms_are_never_taken_over(db: Db, database_url: str) -> None:
    pool, _ = db
    r1, r2, r3 = ids(3)
    async with PgLeases(pool, database_url) as a, PgLeases(pool, database_url) as b:
        await a.claim([r1, r2])
        # r3 has no owner row (a room from before leases): free to take.
        assert await b.take_over([r1, r2, r3]) == [r3]
        assert await a.take_over([r1, r2, r3]) == [r1, r2]  # its own stay its own
        assert await live_rooms(pool, [r1, r2, r3]) == {r1, r2, r3}
        assert await live_rooms(pool, [r1, r2, r3], besides=b.owner) == {r1, r2}
        # A claim never steals: claiming b's room changes nothing.
        await a.claim([r3])
        assert await live_rooms(pool, [r3], besides=a.owner) == {r3}


async def test_a_gone_brokers_rooms_go_to_exactly_one_taker(db: Db, database_url: str) -> None:
    pool, _ = db
    rooms = ids(200)
    async with PgLeases(pool, database_url) as a:
        await a.claim(rooms)
    assert await live_rooms(pool, rooms) == set()  # closing released the lock
    got: dict[str, list[UUID]] = {}
    async with PgLeases(pool, database_url) as b, PgLeases(pool, database_url) as c:

        async def take(name: str, leases: PgLeases) -> None:
            got[name] = await leases.take_over(rooms)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "b", b)
            tg.start_soon(take, "c", c)
        assert not set(got["b"]) & set(got["c"])
        assert set(got["b"]) | set(got["c"]) == set(rooms)
        # Whoever lost the race sees the winner alive now.
        assert await b.take_over(rooms) == got["b"]
        assert await c.take_over(rooms) == got["c"]


async def test_a_broker_whose_lock_connection_dies_takes_it_again_and_hears_what_it_lost(
    db: Db, database_url: str
) -> None:
    pool, _ = db
    kept, stolen = ids(2)
    async with PgLeases(pool, database_url, check_every=0.05) as a:
        await a.claim([kept, stolen])
        assert a._conn is not None
        backend = a._conn.get_server_pid()
        await pool.execute("SELECT pg_terminate_backend($1)", backend)
        with anyio.fail_after(10):
            while await live_rooms(pool, [kept]):  # noqa: ASYNC110 (polling the database)
                await anyio.sleep(0.02)
        # In that window another broker takes a room over (as a resume would).
        async with PgLeases(pool, database_url) as b:
            assert await b.take_over([stolen]) == [stolen]
            lost: list[list[UUID]] = []
            taken_again = anyio.Event()

            async def on_lost(rooms: list[UUID]) -> None:
                lost.append(rooms)
                taken_again.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(a.keep, lambda: [kept, stolen], on_lost)
                with anyio.fail_after(10):
                    await taken_again.wait()
                tg.cancel_scope.cancel()
            assert lost == [[stolen]]
            assert await live_rooms(pool, [kept], besides=b.owner) == {kept}
            assert await a.alive()


async def test_a_broker_resumes_only_the_rooms_no_live_broker_serves(
    pg_store: Db, database_url: str
) -> None:
    pool, store = pg_store  # no read models: the session need not be stored
    subjects = Subjects(prefix=f"t{uuid.uuid4().hex[:8]}")
    scenario = phone()
    started = started_for(scenario, scenario.buyer.items[0].item_name, RunOptions(seed=1))
    nid = started.negotiation_id
    async with PgLeases(pool, database_url) as a_leases:
        first = Broker(InMemoryBus(), store, subjects, leases=a_leases, abort_on_shutdown=False)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await first.open(started)  # no agents: the room stays open, waiting for them
            with anyio.fail_after(10):
                while not await store.read(nid):  # noqa: ASYNC110 (polling the log)
                    await anyio.sleep(0.02)
            assert await open_stream_ids(pool) == [nid]
            async with PgLeases(pool, database_url) as b_leases:
                second = Broker(
                    InMemoryBus(), store, subjects, leases=b_leases, abort_on_shutdown=False
                )
                assert await second.resume(await open_stream_ids(pool)) == []
                assert second.rooms == {}
                assert second.left_to_live == 1
                await start_and_stop(second)
            tg.cancel_scope.cancel()
    # The first broker is gone (its lock released): its open room is free to resume.
    async with PgLeases(pool, database_url) as c_leases:
        third = Broker(InMemoryBus(), store, subjects, leases=c_leases, abort_on_shutdown=False)
        assert await third.resume(await open_stream_ids(pool)) == [nid]
        assert await live_rooms(pool, [nid], besides=uuid.UUID(int=1)) == {nid}
        await start_and_stop(third)


async def test_a_broker_stops_serving_a_room_taken_over_while_its_lock_was_lost(
    pg_store: Db, database_url: str
) -> None:
    pool, store = pg_store
    subjects = Subjects(prefix=f"t{uuid.uuid4().hex[:8]}")
    scenario = phone()
    started = started_for(scenario, scenario.buyer.items[0].item_name, RunOptions(seed=1))
    nid = started.negotiation_id
    # The broker's own keeper checks once an hour here: the test runs one itself, once the
    # other broker has taken the room, so the two never race.
    async with PgLeases(pool, database_url, check_every=3600) as a_leases:
        first = Broker(InMemoryBus(), store, subjects, leases=a_leases, abort_on_shutdown=False)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await first.open(started)
            with anyio.fail_after(10):
                while not await store.read(nid):  # noqa: ASYNC110 (polling the log)
                    await anyio.sleep(0.02)
            # Its lock's connection dies; before it takes the lock again, another broker
            # resumes the room (a PostgreSQL restart seen by both, say).
            assert a_leases._conn is not None
            await pool.execute("SELECT pg_terminate_backend($1)", a_leases._conn.get_server_pid())
            async with PgLeases(pool, database_url) as b_leases:
                second = Broker(
                    InMemoryBus(), store, subjects, leases=b_leases, abort_on_shutdown=False
                )
                with anyio.fail_after(10):
                    while not await second.resume([nid]):  # noqa: ASYNC110 (until a's lock is gone)
                        await anyio.sleep(0.02)
                a_leases.check_every = 0.02
                tg.start_soon(a_leases.keep, first.running, first._forget)
                with anyio.fail_after(10):
                    while nid in first.rooms:  # noqa: ASYNC110 (until a's keeper notices)
                        await anyio.sleep(0.02)
                assert first.running() == []
                await start_and_stop(second)
            tg.cancel_scope.cancel()


async def test_the_keeper_outlives_its_connection_killed_again_and_again(
    db: Db, database_url: str
) -> None:
    pool, _ = db
    (room,) = ids(1)
    lost: list[list[UUID]] = []

    async def on_lost(rooms: list[UUID]) -> None:
        lost.append(rooms)

    async with PgLeases(pool, database_url, check_every=0.005) as a:
        await a.claim([room])
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.keep, lambda: [room], on_lost)  # a failure here fails the test
            for _ in range(25):
                assert a._conn is not None
                killed = a._conn
                await pool.execute("SELECT pg_terminate_backend($1)", killed.get_server_pid())
                with anyio.fail_after(10):
                    while a._conn is killed or not await live_rooms(pool, [room]):  # noqa: ASYNC110
                        await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert lost == []


async def test_the_open_streams_of_one_session_are_its_rooms_not_yet_ended(db: Db) -> None:
    """What `mams broker --resume-session` takes over: that session's open rooms only."""
    pool, store = db
    scenario = phone()
    a, b = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        for session in (a, b):
            await save_session(conn, session, scenario)
    item = scenario.buyer.items[0].item_name
    rooms = [
        started_for(scenario, item, RunOptions(seed=seed), session)
        for session, seed in ((a, 1), (a, 2), (b, 1))
    ]
    a1, a2, b1 = (r.negotiation_id for r in rooms)
    broker = Broker(InMemoryBus(), store, Subjects(prefix="t"), abort_on_shutdown=False)
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        for started in rooms:  # no agents: the rooms stay open, waiting for them
            await broker.open(started)
        with anyio.fail_after(10):
            while len(await open_stream_ids(pool)) < 3:  # noqa: ASYNC110 (polling the log)
                await anyio.sleep(0.02)
        assert set(await open_stream_ids(pool, a)) == {a1, a2}
        assert await open_stream_ids(pool, b) == [b1]
        await broker.abort(a1, "test")
        with anyio.fail_after(10):
            while await open_stream_ids(pool, a) != [a2]:  # noqa: ASYNC110 (polling the log)
                await anyio.sleep(0.02)
        assert await open_stream_ids(pool, uuid.uuid4()) == []
        tg.cancel_scope.cancel()
