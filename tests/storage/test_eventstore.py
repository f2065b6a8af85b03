"""One contract for every EventStore, run against the in-memory and the PostgreSQL store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID, uuid4

import anyio
import asyncpg
import msgspec
import pytest

from mams.storage.audit import check_chain
from mams.storage.errors import ConcurrencyError, StorageError
from mams.storage.eventstore import (
    EventStore,
    InMemoryEventStore,
    PostgresEventStore,
    PreparedAppend,
)
from mams.storage.model import NewEvent
from tests.storage.helpers import event, same, stream


class EventStoreContract:
    """What every EventStore must do. Subclasses provide the `store` fixture."""

    @pytest.fixture
    def store(self) -> EventStore:
        raise NotImplementedError

    async def test_empty_store(self, store: EventStore) -> None:
        sid = uuid4()
        assert await store.read(sid) == []
        assert await store.last_seq(sid) == 0
        assert await store.stream_ids() == []

    async def test_append_then_read_in_seq_order(self, store: EventStore) -> None:
        sid = uuid4()
        events = stream(sid, 1, 5)
        await store.append(events[:2])
        await store.append(events[2:])
        assert same(await store.read(sid), events)
        assert same(await store.read(sid, after_seq=3), events[3:])
        assert await store.last_seq(sid) == 5
        assert await store.stream_ids() == [sid]

    async def test_streams_are_separate(self, store: EventStore) -> None:
        a, b = uuid4(), uuid4()
        ea, eb = stream(a, 1, 3), stream(b, 1, 2)
        await store.append([ea[0], eb[0], ea[1], eb[1], ea[2]])
        assert same(await store.read(a), ea)
        assert same(await store.read(b), eb)
        assert await store.stream_ids() == [a, b]

    async def test_read_streams_reads_several_at_once_filtered_by_type(
        self, store: EventStore
    ) -> None:
        a, b, c = uuid4(), uuid4(), uuid4()
        ea, eb = stream(a, 1, 3), stream(b, 1, 2)
        typed = [msgspec.structs.replace(e, type="buyer.said") for e in ea[1:]]
        await store.append([ea[0], eb[0], *typed, eb[1]])
        everything = await store.read_streams([b, a, c])
        assert set(everything) == {a, b}  # c has no events: absent
        assert same(everything[a], [ea[0], *typed])
        assert same(everything[b], eb)
        said = await store.read_streams([a, b], types=["buyer.said", "nope"])
        assert set(said) == {a}
        assert same(said[a], typed)
        assert await store.read_streams([]) == {}

    async def test_data_round_trips_as_equal_json(self, store: EventStore) -> None:
        sid = uuid4()
        body = {"text": 'déjà vu, 10% off "now"', "price": "12.50", "n": [1, 2, {"x": None}]}
        e = event(sid, 1, body)
        await store.append([e])
        [stored] = await store.read(sid)
        assert json.loads(stored.data) == body
        assert stored.recorded_at.tzinfo is not None

    async def test_reappending_the_same_events_is_a_no_op(self, store: EventStore) -> None:
        sid = uuid4()
        events = stream(sid, 1, 3)
        await store.append(events)
        await store.append(events)
        await store.append([events[1]])
        assert same(await store.read(sid), events)

    async def test_batch_mixing_stored_and_new_events_adds_only_new(
        self, store: EventStore
    ) -> None:
        sid = uuid4()
        events = stream(sid, 1, 4)
        await store.append(events[:2])
        await store.append(events)  # 1, 2 already stored; 3, 4 new
        assert same(await store.read(sid), events)

    async def test_same_event_twice_in_one_batch_is_stored_once(self, store: EventStore) -> None:
        sid = uuid4()
        e1, e2 = stream(sid, 1, 2)
        await store.append([e1, e1, e2, e1])
        assert same(await store.read(sid), [e1, e2])

    async def test_different_event_at_a_taken_seq_raises(self, store: EventStore) -> None:
        sid = uuid4()
        await store.append(stream(sid, 1, 2))
        rival = event(sid, 2)
        with pytest.raises(ConcurrencyError) as caught:
            await store.append([rival])
        assert (caught.value.stream_id, caught.value.seq) == (sid, 2)
        assert f"seq 2 to stream {sid}" in str(caught.value)

    async def test_two_events_fighting_for_a_seq_in_one_batch_raise(
        self, store: EventStore
    ) -> None:
        sid = uuid4()
        with pytest.raises(ConcurrencyError):
            await store.append([event(sid, 1), event(sid, 1)])
        assert await store.read(sid) == []

    async def test_a_failing_batch_leaves_nothing(self, store: EventStore) -> None:
        taken, fresh = uuid4(), uuid4()
        await store.append([event(taken, 1)])
        with pytest.raises(ConcurrencyError):
            await store.append([*stream(fresh, 1, 3), event(taken, 1)])
        assert await store.read(fresh) == []
        assert await store.last_seq(taken) == 1

    async def test_invalid_json_is_rejected_and_leaves_nothing(self, store: EventStore) -> None:
        sid = uuid4()
        bad = NewEvent(sid, 2, uuid4(), "test.bad", b"{not json")
        with pytest.raises(StorageError):
            await store.append([event(sid, 1), bad])
        assert await store.read(sid) == []

    async def test_seq_must_start_at_one(self, store: EventStore) -> None:
        with pytest.raises(StorageError, match="seqs start at 1"):
            await store.append([event(uuid4(), 0)])

    async def test_concurrent_appenders_lose_nothing_and_double_nothing(
        self, store: EventStore
    ) -> None:
        streams = [uuid4() for _ in range(20)]
        planned = {sid: stream(sid, 1, 15) for sid in streams}

        async def writer(events: Sequence[NewEvent]) -> None:
            for i in range(0, len(events), 3):
                await store.append(events[i : i + 3])
                await store.append(events[i : i + 3])  # retried delivery: no double

        async with anyio.create_task_group() as tg:
            for events in planned.values():
                tg.start_soon(writer, events)
        assert sorted(await store.stream_ids()) == sorted(streams)
        for sid, events in planned.items():
            assert same(await store.read(sid), events)

    async def test_racing_writers_on_one_stream_get_distinct_seqs(self, store: EventStore) -> None:
        sid = uuid4()
        per_writer = 10
        written: list[UUID] = []

        async def writer() -> None:
            for _ in range(per_writer):
                while True:
                    e = event(sid, await store.last_seq(sid) + 1)
                    try:
                        await store.append([e])
                    except ConcurrencyError:
                        continue
                    written.append(e.event_id)
                    break

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(writer)
        stored = await store.read(sid)
        assert [s.seq for s in stored] == list(range(1, 8 * per_writer + 1))
        assert sorted(s.event_id for s in stored) == sorted(written)


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def store(self) -> EventStore:
        return InMemoryEventStore()


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def store(self, pg_store: tuple[asyncpg.Pool, PostgresEventStore]) -> EventStore:
        return pg_store[1]


async def test_chain_from_memory_equals_chain_from_the_log(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    # A store remembers the hashes it inserted; what it did not insert (another writer's
    # rows, a re-append) it reads from the log. Either way the chain is whole.
    pool, remembering = pg_store
    sid = uuid4()
    events = stream(sid, 1, 8)
    await remembering.append(events[:2])
    await remembering.append(events[2:4])  # chains from memory
    await PostgresEventStore(pool).append(events[4:5])  # another writer: memory is stale
    await remembering.append(events[5:7])  # so seq 6 chains from the log's seq 5
    await remembering.append(events[4:7])  # a re-append: nothing new, nothing remembered
    await PostgresEventStore(pool).append(events[7:])  # chains from the log
    stored = await remembering.read(sid)
    assert stored[0].prev_hash == bytes(32)
    assert [s.prev_hash for s in stored[1:]] == [s.hash for s in stored[:-1]]
    assert check_chain(stored) == []


async def two_prepared(
    store: PostgresEventStore, events: list[NewEvent], cut: int
) -> tuple[PreparedAppend, PreparedAppend]:
    """Append the first two events, then prepare events[2:cut] and events[cut:], the
    second on top of the first before it commits (as the broker's writer does)."""
    await store.append(events[:2])
    first = await store.prepare(events[2:cut])
    second = await store.prepare(events[cut:])
    assert first is not None
    assert second is not None
    assert second.links[0][0] == first.links[-1][1]
    return first, second


async def test_prepared_batches_chain_from_the_one_still_committing(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    _, store = pg_store
    events = stream(uuid4(), 1, 6)
    first, second = await two_prepared(store, events, 4)
    await store.commit(first)
    await store.commit(second)
    stored = await store.read(events[0].stream_id)
    assert same(stored, events)
    assert check_chain(stored) == []


async def test_a_batch_prepared_on_a_chain_that_did_not_happen_chains_again(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    # The batch it was prepared on never commits; another writer stores a different seq 3.
    # The database refuses the stale link (SQLSTATE MA001) and the store chains again from
    # the log, so no broken link is ever stored.
    pool, store = pg_store
    sid = uuid4()
    events = stream(sid, 1, 4)
    _, after = await two_prepared(store, events, 3)
    other = event(sid, 3, {"by": "another writer"})
    await PostgresEventStore(pool).append([other])
    await store.commit(after)
    stored = await store.read(sid)
    assert same(stored, [*events[:2], other, events[3]])
    assert check_chain(stored) == []
    assert stored[3].prev_hash == stored[2].hash != after.links[0][0]
