"""After a NATS outage, what it swallowed is sent again (real nats-server processes).

- NatsBus runs its reconnect hooks once the server is back and the subscriptions are in
  place again; a failing hook is logged and the next one still runs.
- The hook a Broker gives its bus re-sends every open room's catch-up without a hello.
- The hook an AgentActor gives its bus says a full catch-up hello.
Whichever side comes back last, the other is covered; tests/faults/test_server_restarts.py
runs a whole market of processes through a NATS restart.
"""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from mams.actors.agent import AgentActor
from mams.actors.brains.baseline import BaselineSeller
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.messages import (
    BuyerRoomOpened,
    Hello,
    SellerMessage,
    TurnStarted,
    decode_inbox,
    decode_outbox,
)
from mams.storage.eventstore import PostgresEventStore
from tests.faults.rig import HandBus, Rig, phone_room
from tests.faults.servers import OwnNats
from tests.faults.test_broker_crash import GatedBuyer, poll

pytestmark = pytest.mark.integration


async def test_reconnect_hooks_run_once_the_connection_and_its_subscriptions_are_back(
    own_nats: OwnNats,
) -> None:
    bus = await NatsBus.connect(own_nats.url, name="hooked", reconnect_wait=0.05)
    called: list[str] = []

    async def broken() -> None:
        raise RuntimeError("a hook with a bug")

    async def note() -> None:
        called.append("reconnected")

    bus.on_reconnect(broken)  # logged; the next hook still runs
    bus.on_reconnect(note)
    try:
        sub = await bus.subscribe("hooks.test")
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(own_nats.kill)
            await anyio.to_thread.run_sync(own_nats.start)
            await poll(lambda: called, within=20)
            await bus.publish("hooks.test", b"after")
            assert (await anext(sub)).data == b"after"
        assert called == ["reconnected"]
    finally:
        await bus.close()


async def test_a_reconnected_broker_re_sends_every_open_rooms_catch_up_without_a_hello(
    nats_url: str, pg_store: tuple[asyncpg.Pool, PostgresEventStore], subjects: Subjects
) -> None:
    _, store = pg_store
    started, sellers = phone_room(seed=5)
    buyer_brain = GatedBuyer()  # holds round 2, so the room stays open
    rig = Rig(nats_url, store, subjects)
    seen: list[object] = []
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tap = await (await rig.bus("tap")).subscribe(subjects.inbox(AgentId("buyer")))

                async def read_tap() -> None:
                    async for msg in tap:
                        seen.append(decode_inbox(msg.data))

                tg.start_soon(read_tap)
                hand = HandBus(await rig.bus("broker"))
                broker, _ = await rig.broker(tg, "broker", bus=hand, crashes=False)
                brains = {a: BaselineSeller() for a in sellers}
                await rig.open_room(tg, broker, started, buyer_brain, brains)
                await buyer_brain.waiting.wait()
                await poll(lambda: any(isinstance(m, TurnStarted) and m.round == 2 for m in seen))
                before = len(seen)

                [resync] = hand.hooks  # what Broker.run gave the bus for its reconnects
                await resync()
                await poll(lambda: any(isinstance(m, TurnStarted) for m in seen[before:]))
                buyer_brain.release.set()
                tg.cancel_scope.cancel()
    finally:
        await rig.close()

    again = seen[before:]
    assert isinstance(again[0], BuyerRoomOpened)
    replies = [m for m in seen[:before] if isinstance(m, SellerMessage)]
    assert [m for m in again if isinstance(m, SellerMessage)] == replies  # round 1's answers
    assert again[-1] == next(
        m for m in seen[:before] if isinstance(m, TurnStarted) and m.round == 2
    )


async def test_an_agent_asks_for_a_full_catch_up_when_its_connection_comes_back(
    nats_url: str, subjects: Subjects
) -> None:
    bus = HandBus(await NatsBus.connect(nats_url, name="seller"))
    watcher = await NatsBus.connect(nats_url, name="watcher")
    hellos: list[Hello] = []
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tap = await watcher.subscribe(subjects.outbox(AgentId("techmart")))
                await watcher.flush()

                async def read_tap() -> None:
                    async for msg in tap:
                        m = decode_outbox(msg.data)
                        if isinstance(m, Hello):
                            hellos.append(m)

                tg.start_soon(read_tap)
                actor = AgentActor(bus, subjects, "techmart", BaselineSeller(), "seller")
                await tg.start(actor.run)
                await poll(lambda: hellos)  # its first hello, on start
                assert len(bus.hooks) == 1
                await bus.hooks[0]()  # what NatsBus runs once the server is back
                await poll(lambda: len(hellos) == 2)
                tg.cancel_scope.cancel()
    finally:
        await bus.close()
        await watcher.close()
    assert hellos[1].catch_up is True
    assert hellos[1].role == "seller"
