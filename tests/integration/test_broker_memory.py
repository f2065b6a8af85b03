"""A broker serving forever holds its open rooms plus a bounded tail of ended ones."""

from __future__ import annotations

import anyio

from mams.actors.broker import Broker
from mams.actors.market import RunOptions
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import Subjects
from mams.storage.eventstore import InMemoryEventStore
from tests.integration.helpers import started_for
from tests.integration.scenarios import phone


async def _ended(store: InMemoryEventStore, nid: object) -> bool:
    events = await store.read(nid)  # type: ignore[arg-type]
    return bool(events) and events[-1].type == "negotiation.ended"


async def test_ended_rooms_beyond_keep_ended_are_forgotten_and_the_log_keeps_them() -> None:
    store = InMemoryEventStore()
    broker = Broker(InMemoryBus(), store, Subjects(prefix="mem"), keep_ended=3)
    scenario = phone()
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        ids = []
        for _ in range(10):
            started = started_for(scenario, "USB-C cable", RunOptions())
            ids.append(started.negotiation_id)
            await broker.open(started)
            await broker.abort(started.negotiation_id, "test over")
        with anyio.fail_after(10):
            for nid in ids:
                while not await _ended(store, nid):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        # Still open rooms are never forgotten; the last three ended are kept.
        still_open = started_for(scenario, "USB-C cable", RunOptions())
        await broker.open(still_open)
        with anyio.fail_after(10):
            while still_open.negotiation_id not in broker.rooms:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert set(broker.rooms) == {*ids[-3:], still_open.negotiation_id}
        assert broker.running() == [still_open.negotiation_id]
        tg.cancel_scope.cancel()
    for nid in ids:
        assert await _ended(store, nid)  # the log is untouched by forgetting
