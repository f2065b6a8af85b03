"""GroupCommitter: batching, isolation of the guilty caller, retries while the DB is away."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import uuid4

import anyio
import asyncpg
import pytest

from mams.storage.errors import ConcurrencyError, DatabaseUnavailable, StorageError
from mams.storage.eventstore import EventStore, InMemoryEventStore, PostgresEventStore
from mams.storage.groupcommit import GroupCommitter
from mams.storage.model import NewEvent
from tests.storage.helpers import WrappedStore, event, same, stream


class FlakyStore(WrappedStore):
    """Delegates to an in-memory store after failing the first `failures` appends."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def append(self, events: Sequence[NewEvent]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise DatabaseUnavailable("postgresql://u:secret@db/x", "connection refused")
        await super().append(events)


class GatedStore(FlakyStore):
    """Holds every append until `gate` is set; `entered` tells that one is waiting."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def append(self, events: Sequence[NewEvent]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().append(events)


async def run_callers(committer: GroupCommitter, batches: list[list[NewEvent]]) -> None:
    async with anyio.create_task_group() as tg:
        for batch in batches:
            tg.start_soon(committer.append, batch)


async def assert_500_callers_batched(store: EventStore) -> None:
    streams = [uuid4() for _ in range(500)]
    batches = [stream(sid, 1, 2 + i % 11) for i, sid in enumerate(streams)]
    async with GroupCommitter(store, max_batch=10_000) as committer:
        with anyio.fail_after(60):
            await run_callers(committer, batches)
    total = sum(len(b) for b in batches)
    assert committer.stats.callers_committed == 500
    assert committer.stats.events_committed == total
    assert committer.stats.batches <= 50  # far fewer commits than callers
    for sid, batch in zip(streams, batches, strict=True):
        assert same(await store.read(sid), batch)


async def test_500_concurrent_callers_share_few_commits_in_memory() -> None:
    await assert_500_callers_batched(InMemoryEventStore())


async def test_500_concurrent_callers_share_few_commits_in_postgres(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    await assert_500_callers_batched(pg_store[1])


async def test_only_the_guilty_caller_gets_the_concurrency_error(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    _, store = pg_store
    contested = uuid4()
    await store.append([event(contested, 1)])
    innocent = [stream(uuid4(), 1, 3) for _ in range(20)]
    outcomes: dict[int, BaseException | None] = {}

    async def call(i: int, events: list[NewEvent]) -> None:
        try:
            await committer.append(events)
        except ConcurrencyError as exc:
            outcomes[i] = exc
        else:
            outcomes[i] = None

    async with GroupCommitter(store) as committer, anyio.create_task_group() as tg:
        for i, events in enumerate(innocent):
            tg.start_soon(call, i, events)
        tg.start_soon(call, -1, [event(contested, 2), event(contested, 1)])
    guilty = outcomes.pop(-1)
    assert isinstance(guilty, ConcurrencyError)
    assert (guilty.stream_id, guilty.seq) == (contested, 1)
    assert all(outcome is None for outcome in outcomes.values())
    for events in innocent:
        assert same(await store.read(events[0].stream_id), events)
    assert await store.last_seq(contested) == 1  # the guilty batch left nothing


async def test_same_event_from_two_callers_is_stored_once() -> None:
    store = InMemoryEventStore()
    sid = uuid4()
    events = stream(sid, 1, 3)
    async with GroupCommitter(store) as committer:
        await run_callers(committer, [events, events, events[:1]])
    assert same(await store.read(sid), events)


async def test_callers_wait_for_the_commit() -> None:
    store = GatedStore()
    sid = uuid4()
    returned = anyio.Event()

    async def caller() -> None:
        await committer.append([event(sid, 1)])
        returned.set()

    async with GroupCommitter(store, max_delay=0) as committer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await store.entered.wait()
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert not returned.is_set()  # the append has not committed yet
            store.gate.set()
        assert returned.is_set()
    assert await store.last_seq(sid) == 1


async def test_retries_while_the_database_is_unavailable() -> None:
    store = FlakyStore(failures=3)
    sid = uuid4()
    async with GroupCommitter(store, backoff_initial=0.001, backoff_max=0.002) as committer:
        await committer.append(stream(sid, 1, 2))
    assert committer.stats.unavailable_retries == 3
    assert await store.last_seq(sid) == 2


async def test_gives_up_after_the_retry_budget() -> None:
    store = FlakyStore(failures=1_000_000)
    async with GroupCommitter(store, retry_timeout=0, backoff_initial=0.001) as committer:
        with pytest.raises(DatabaseUnavailable) as caught:
            await committer.append([event(uuid4(), 1)])
    assert "secret" not in str(caught.value)
    assert "unset DATABASE_URL" in str(caught.value)


async def test_survives_server_side_disconnects(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
    database_url: str,
) -> None:
    pool, store = pg_store
    sid = uuid4()
    async with GroupCommitter(store, backoff_initial=0.01) as committer:
        await committer.append([event(sid, 1)])
        # Kill exactly this pool's connection(s), nothing else on the shared server.
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await committer.append([event(sid, 2)])
    assert await store.last_seq(sid) == 2


async def test_append_needs_a_running_committer() -> None:
    committer = GroupCommitter(InMemoryEventStore())
    with pytest.raises(StorageError, match="not running"):
        await committer.append([event(uuid4(), 1)])


async def test_run_in_a_task_group_and_close_drains() -> None:
    store = InMemoryEventStore()
    sid = uuid4()
    committer = GroupCommitter(store)
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        await committer.append(stream(sid, 1, 2))
        await committer.aclose()
    assert await store.last_seq(sid) == 2
    with pytest.raises(StorageError):
        await committer.append([event(sid, 3)])


async def test_an_error_in_the_body_propagates_as_itself() -> None:
    store = InMemoryEventStore()
    sid = uuid4()
    await store.append([event(sid, 1)])
    with pytest.raises(ConcurrencyError):
        async with GroupCommitter(store) as committer:
            await committer.append([event(sid, 1)])


async def test_parallel_batches_lose_nothing(
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
) -> None:
    _, store = pg_store
    streams = [uuid4() for _ in range(200)]
    planned = {sid: stream(sid, 1, 6) for sid in streams}

    async def appender(events: list[NewEvent]) -> None:
        for i in range(0, len(events), 2):
            await committer.append(events[i : i + 2])

    async with (
        GroupCommitter(store, max_inflight=3, max_batch=50) as committer,
        anyio.create_task_group() as tg,
    ):
        for events in planned.values():
            tg.start_soon(appender, events)
    assert committer.stats.callers_committed == 600
    for sid, events in planned.items():
        assert same(await store.read(sid), events)
