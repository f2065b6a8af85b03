"""The group committer alone (storage.committer): an in-memory "deliver" list instead of a
bus, stores that hold, refuse or go away on cue. Log then deliver: nothing is delivered
before it is committed, each room in decision order, barriers after every lane; a refused
group split down to the one command at fault; a drain commits what was queued or in
flight; an unavailable database retried. No sleeps: tests wait on events."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID, uuid4

import anyio
import asyncpg
import pytest
from anyio import wait_all_tasks_blocked

from mams.storage.committer import Batch, Committer
from mams.storage.errors import DatabaseUnavailable, StorageError
from mams.storage.eventstore import EventStore, PostgresEventStore
from mams.storage.model import NewEvent
from tests.storage.helpers import WrappedStore, event

_made: list[Committer] = []


def make(store: EventStore, deliver: Delivered, **options: Any) -> Committer:
    """A committer whose lane queues are closed when the test ends (`close`)."""
    committer = Committer(store, deliver, **options)
    _made.append(committer)
    return committer


@pytest.fixture(autouse=True)
def _close_committers() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


def room_batch(nid: UUID, seq: int, type_: str = "test.happened") -> Batch:
    """One command's batch: one event of room `nid`, delivered as (room, seq)."""
    return Batch(
        events=[event(nid, seq, type_=type_)],
        deliveries=[(str(nid), str(seq).encode())],
        observed=[],
        nid=nid,
    )


def barrier(name: str) -> Batch:
    return Batch(events=[], deliveries=[("barrier", name.encode())], observed=[])


class Delivered:
    """The deliver callback: records what went out, checking each batch is committed."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.sent: list[tuple[str, bytes]] = []
        self.uncommitted: list[NewEvent] = []
        self.changed = anyio.Event()

    async def __call__(self, batches: Sequence[Batch]) -> None:
        for b in batches:
            for e in b.events:
                stored = await self.store.read(e.stream_id, after_seq=e.seq - 1)
                if not stored or stored[0].event_id != e.event_id:
                    self.uncommitted.append(e)
            self.sent += b.deliveries
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, count: int) -> None:
        while len(self.sent) < count:
            await self.changed.wait()


class GatedStore(WrappedStore):
    """Holds every append (only those of stream `only`, if set) while `gate` is not set;
    `entered` is set once one waits."""

    def __init__(self, only: UUID | None = None) -> None:
        super().__init__()
        self.only = only
        self.entered = anyio.Event()
        self.gate = anyio.Event()
        self.gate.set()

    async def append(self, events: Sequence[NewEvent]) -> None:
        held = self.only is None or any(e.stream_id == self.only for e in events)
        if held and not self.gate.is_set():
            self.entered.set()
            await self.gate.wait()
        await super().append(events)


class RefusingStore(WrappedStore):
    """Refuses (as PostgreSQL refuses a bad row) every append holding a "poison" event."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0

    async def append(self, events: Sequence[NewEvent]) -> None:
        self.appends += 1
        if any(e.type == "poison" for e in events):
            raise StorageError("rejected: a poison event")
        await super().append(events)


class AwayStore(WrappedStore):
    """Unavailable for its first `failures` appends."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def append(self, events: Sequence[NewEvent]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise DatabaseUnavailable("postgresql://db/x", "connection refused")
        await super().append(events)


async def test_each_room_is_delivered_after_its_commit_in_decision_order() -> None:
    store = WrappedStore()
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=3, max_batch=7)
    rooms = [uuid4() for _ in range(10)]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            for seq in range(1, 21):
                for nid in rooms:
                    await committer.submit(room_batch(nid, seq))
                if seq % 5 == 0:
                    await anyio.lowlevel.checkpoint()  # let lanes commit between bursts
            await delivered.until(200)
            tg.cancel_scope.cancel()
    assert delivered.uncommitted == []
    for nid in rooms:
        seqs = [int(data) for subject, data in delivered.sent if subject == str(nid)]
        assert seqs == list(range(1, 21))
    assert 1 < committer.commits < 200  # grouped: many commands per commit


async def test_a_barrier_goes_out_only_after_every_lane_committed_what_came_before() -> None:
    # One room per lane (a room's lane is its id modulo the lane count); only the first
    # room's commits hang, so the other lane is free to run ahead, and must not.
    rooms = [UUID(int=10), UUID(int=11)]
    store = GatedStore(only=rooms[0])
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=2)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            store.gate = anyio.Event()
            await committer.submit(room_batch(rooms[0], 1))
            await store.entered.wait()
            await committer.submit(room_batch(rooms[1], 1))
            await committer.submit(barrier("welcome"))
            await committer.submit(room_batch(rooms[1], 2))
            await wait_all_tasks_blocked()
            # The free lane delivered what came before the barrier, and stopped there.
            assert delivered.sent == [(str(rooms[1]), b"1")]
            store.gate.set()
            await delivered.until(4)
            tg.cancel_scope.cancel()
    assert delivered.uncommitted == []
    assert delivered.sent[1:] == [
        (str(rooms[0]), b"1"),
        ("barrier", b"welcome"),
        (str(rooms[1]), b"2"),
    ]


async def test_a_batch_the_decider_calls_stale_is_neither_committed_nor_delivered() -> None:
    store = WrappedStore()
    delivered = Delivered(store)
    refused = uuid4()  # a room whose earlier command the database refused
    committer = make(store, delivered, lanes=1, stale=lambda b: b.nid == refused)
    fine = uuid4()
    await committer.submit(room_batch(refused, 2))
    await committer.submit(room_batch(fine, 1))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            await delivered.until(1)
            await wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert delivered.sent == [(str(fine), b"1")]
    assert await store.read(refused) == []


async def test_a_late_barrier_reads_the_log_once_everything_before_it_committed() -> None:
    store = GatedStore()
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=2)
    nid = uuid4()
    seen: list[int] = []

    async def late() -> list[tuple[str, bytes]]:
        seen.append(await store.last_seq(nid))
        return [("recap", b"late")]

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            store.gate = anyio.Event()
            await committer.submit(room_batch(nid, 1))
            await store.entered.wait()
            await committer.submit(room_batch(nid, 2))
            recap = barrier("recap")
            recap.late = late
            await committer.submit(recap)
            await committer.submit(room_batch(nid, 3))
            await wait_all_tasks_blocked()
            assert seen == []
            store.gate.set()
            await delivered.until(4)
            tg.cancel_scope.cancel()
    assert seen == [2]  # both batches decided before it, not the one after
    assert delivered.sent[2] == ("recap", b"late")


async def test_a_refused_group_splits_down_to_the_one_command_and_commits_the_rest() -> None:
    store = RefusingStore()
    delivered = Delivered(store)
    refused: list[tuple[UUID, str]] = []
    broken: set[UUID] = set()

    def on_refused(nid: UUID, reason: str) -> None:
        refused.append((nid, reason))
        broken.add(nid)

    committer = make(
        store,
        delivered,
        lanes=1,
        stale=lambda b: b.nid in broken,
        on_refused=on_refused,
    )
    good = [uuid4() for _ in range(6)]
    bad = uuid4()
    # Queued before the lane runs: it takes them all as one group.
    for nid in good[:3]:
        await committer.submit(room_batch(nid, 1))
    await committer.submit(room_batch(bad, 1, type_="poison"))
    await committer.submit(room_batch(bad, 2))  # decided on top of the refused command
    for nid in good[3:]:
        await committer.submit(room_batch(nid, 1))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            await delivered.until(6)
            await wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert [nid for nid, _ in refused] == [bad]
    assert "poison" in refused[0][1]
    assert delivered.uncommitted == []
    assert [subject for subject, _ in delivered.sent] == [str(n) for n in good]  # in order
    for nid in good:
        assert len(await store.read(nid)) == 1
    assert await store.read(bad) == []  # neither the refused command nor the one after
    assert store.appends > 2  # the group, then its halves
    assert committer.commits == 1


async def test_a_drain_commits_what_was_queued_and_in_flight_and_delivers_none() -> None:
    store = GatedStore()
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=1, max_batch=1)
    rooms = [uuid4() for _ in range(4)]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            store.gate = anyio.Event()  # the first commit never finishes
            for nid in rooms[:3]:
                await committer.submit(room_batch(nid, 1))
            await store.entered.wait()
            await wait_all_tasks_blocked()  # one in flight, one prepared, one queued
            tg.cancel_scope.cancel()
        store.gate.set()
        drained = await committer.drain([room_batch(rooms[3], 1)])
    assert [b.nid for b in drained] == rooms
    for nid in rooms:
        assert len(await store.read(nid)) == 1
    assert delivered.sent == []  # delivering what a drain committed is the caller's call


async def test_a_drain_records_every_stream_but_the_one_the_database_refuses() -> None:
    store = RefusingStore()
    committer = make(store, Delivered(store), lanes=1)
    rooms = [uuid4() for _ in range(3)]
    await committer.submit(room_batch(rooms[0], 1))
    await committer.submit(room_batch(rooms[1], 1, type_="poison"))
    await committer.submit(room_batch(rooms[2], 1))
    with anyio.fail_after(20):
        await committer.drain()
    assert [len(await store.read(nid)) for nid in rooms] == [1, 0, 1]


async def test_an_unavailable_database_is_retried_and_nothing_goes_out_before() -> None:
    store = AwayStore(failures=3)
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=1)
    nid = uuid4()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            await committer.submit(room_batch(nid, 1))
            await delivered.until(1)
            tg.cancel_scope.cancel()
    assert store.calls == 4
    assert delivered.uncommitted == []


async def test_a_database_away_past_the_retry_timeout_stops_the_committer() -> None:
    store = AwayStore(failures=1_000)
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=1, retry_timeout=0.1)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            await committer.submit(room_batch(uuid4(), 1))

    with anyio.fail_after(20), pytest.raises(BaseExceptionGroup) as raised:
        await serve()
    assert raised.group_contains(DatabaseUnavailable)
    assert delivered.sent == []


async def test_a_pipelined_store_commits_and_delivers_in_order(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    _, store = pg_store
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=2, max_batch=5)
    rooms = [uuid4() for _ in range(8)]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            for seq in range(1, 11):
                for nid in rooms:
                    await committer.submit(room_batch(nid, seq))
            await committer.submit(barrier("end"))
            await delivered.until(81)
            tg.cancel_scope.cancel()
    assert delivered.uncommitted == []
    assert delivered.sent[-1] == ("barrier", b"end")
    for nid in rooms:
        seqs = [int(data) for subject, data in delivered.sent if subject == str(nid)]
        assert seqs == list(range(1, 11))


async def test_postgresql_refusing_one_command_costs_only_that_command(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    _, store = pg_store
    contested = uuid4()
    await store.append([event(contested, 1)])  # taken: a different event at seq 1 is refused
    delivered = Delivered(store)
    refused: list[UUID] = []
    committer = make(store, delivered, lanes=1, on_refused=lambda nid, reason: refused.append(nid))
    innocent = [uuid4() for _ in range(20)]
    for nid in innocent[:10]:
        await committer.submit(room_batch(nid, 1))
    await committer.submit(room_batch(contested, 1))
    for nid in innocent[10:]:
        await committer.submit(room_batch(nid, 1))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            await delivered.until(20)
            tg.cancel_scope.cancel()
    assert refused == [contested]
    assert delivered.uncommitted == []
    assert [subject for subject, _ in delivered.sent] == [str(n) for n in innocent]
    assert await store.last_seq(contested) == 1


async def test_a_server_side_disconnect_is_retried(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore], database_url: str
) -> None:
    pool, store = pg_store
    delivered = Delivered(store)
    committer = make(store, delivered, lanes=1)
    nid = uuid4()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            await committer.submit(room_batch(nid, 1))
            await delivered.until(1)
            # Kill exactly this pool's connection(s), nothing else on the shared server.
            async with pool.acquire() as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
            admin = await asyncpg.connect(database_url)
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            await committer.submit(room_batch(nid, 2))
            await delivered.until(2)
            tg.cancel_scope.cancel()
    assert await store.last_seq(nid) == 2
    assert delivered.uncommitted == []
