"""On the way out the broker commits everything it decided, whatever stage of its commit
lane each batch had reached: here one batch is stuck in a commit and the next has been
taken by the lane's writer, which is exactly when it used to slip out of the lane's
bookkeeping (the commit stage cleared the "preparing" list the writer had just filled),
so a Ctrl-C lost that room's opening and then could not record its abort."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import anyio

from mams.actors.broker import Broker
from mams.actors.market import RunOptions
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import Subjects
from mams.domain.negotiation import Open
from mams.storage.errors import StorageError
from mams.storage.model import NewEvent
from tests.integration.helpers import started_for
from tests.integration.scenarios import phone
from tests.storage.helpers import WrappedStore


class FirstCommitHangs(WrappedStore):
    """The first append never returns (a commit in flight when the broker is stopped)."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0
        self.hung = anyio.Event()

    async def append(self, events: Sequence[NewEvent]) -> None:
        self.appends += 1
        if self.appends == 1:
            self.hung.set()
            await anyio.sleep_forever()
        await super().append(events)


async def test_a_shutdown_commits_the_batch_the_writer_took_while_a_commit_hung() -> None:
    store = FirstCommitHangs()
    scenario = phone()
    item = scenario.buyer.items[0].item_name
    first, second = (started_for(scenario, item, RunOptions(seed=s)) for s in (1, 2))
    # One lane, one batch per commit: the first room's opening commits (and hangs), the
    # second's is taken by the writer meanwhile.
    broker = Broker(InMemoryBus(), store, Subjects(prefix="shut"), commit_lanes=1, max_batch=1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(broker.run)
            await anyio.sleep(0.05)  # every stage idle, waiting for work
            # Both openings at once (what `open` queues, without its checkpoint between):
            # the broker decides both in one go, the writer takes the first, hands it to
            # the idle commit stage and takes the second before that stage runs.
            for started in (first, second):
                broker._commands[0].send_nowait((started.negotiation_id, Open(started=started)))
            await store.hung.wait()
            await anyio.sleep(0.05)  # let the writer take the second batch
            tg.cancel_scope.cancel()
    # Both rooms: opened, then recorded as aborted (abort_on_shutdown), seqs 1..n.
    for started in (first, second):
        stored = await store.read(started.negotiation_id)
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1)), started.seed
        assert stored[0].type == "negotiation.started"
        assert stored[-1].type == "negotiation.ended"


class RejectsAStreamOnceItEnds(WrappedStore):
    """Rejects any append holding the end of one stream (as PostgreSQL rejects a row)."""

    def __init__(self, poisoned: UUID) -> None:
        super().__init__()
        self.poisoned = poisoned

    async def append(self, events: Sequence[NewEvent]) -> None:
        if any(e.stream_id == self.poisoned and e.type == "negotiation.ended" for e in events):
            raise StorageError(f"rejected: {self.poisoned}")
        await super().append(events)


async def test_a_stream_the_store_rejects_on_the_way_out_costs_only_its_own_record() -> None:
    scenario = phone()
    item = scenario.buyer.items[0].item_name
    good, bad = (started_for(scenario, item, RunOptions(seed=s)) for s in (1, 2))
    store = RejectsAStreamOnceItEnds(bad.negotiation_id)
    broker = Broker(InMemoryBus(), store, Subjects(prefix="shut"))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(broker.run)
            for started in (good, bad):
                await broker.open(started)  # no agents: both stay open
            while len(await store.stream_ids()) < 2:  # noqa: ASYNC110 (polling the log)
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert (await store.read(good.negotiation_id))[-1].type == "negotiation.ended"
    assert (await store.read(bad.negotiation_id))[-1].type != "negotiation.ended"
