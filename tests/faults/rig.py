"""In-process crash rigs: brokers and agent actors on their own real NATS connections,
where a broker can crash (cancelled with no shutdown work) and another take over."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import anyio
from anyio.abc import TaskGroup, TaskStatus

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.broker import Broker
from mams.actors.market import RunOptions
from mams.bus.base import DEFAULT_MAX_PENDING, Bus, Subscription
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.events import NegotiationStarted
from mams.storage.eventstore import EventStore
from tests.integration.helpers import started_for
from tests.integration.scenarios import phone


class HandBus:
    """A real bus under the test's hand: its publishes vanish once `cut` is set (a process
    about to die), and the reconnect hooks given to it are kept in `hooks`, to fire by
    hand (what NatsBus runs once the server is back), instead of passed on."""

    def __init__(self, inner: Bus) -> None:
        self.inner = inner
        self.cut = False
        self.hooks: list[Callable[[], Awaitable[None]]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        if not self.cut:
            await self.inner.publish(subject, data)

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        return await self.inner.subscribe(subject, max_pending=max_pending)

    async def flush(self) -> None:
        await self.inner.flush()

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        self.hooks.append(hook)

    async def close(self) -> None:
        await self.inner.close()


def phone_room(seed: int) -> tuple[NegotiationStarted, list[str]]:
    """The phone scenario's iPhone-case room (6 rounds, 60 s deadlines: only the test moves
    it on) and its sellers' agent ids."""
    options = RunOptions(max_rounds=6, seed=seed, round_timeout=60)
    started = started_for(phone(), "iPhone 15 case", options)
    return started, [s.agent_id for s in started.sellers]


async def _serve(
    broker: Broker, scope: anyio.CancelScope, *, task_status: TaskStatus[None]
) -> None:
    with scope:
        await broker.run(task_status=task_status)


async def _crash() -> None:  # no commit of queued work, no abort: what SIGKILL leaves
    return None


class Rig:
    """Connections made here are closed by `close` (call it in a finally)."""

    def __init__(self, nats_url: str, store: EventStore, subjects: Subjects) -> None:
        self.nats_url = nats_url
        self.store = store
        self.subjects = subjects
        self.buses: list[Bus] = []

    async def bus(self, name: str) -> Bus:
        bus = await NatsBus.connect(self.nats_url, name=name)
        self.buses.append(bus)
        return bus

    async def broker(
        self,
        tg: TaskGroup,
        name: str,
        *,
        bus: Bus | None = None,
        crashes: bool = True,
        resume: bool = False,
    ) -> tuple[Broker, anyio.CancelScope]:
        """A serving broker and the scope that stops it (a crash, if `crashes`); with
        `resume`, it first takes over the open rooms of the log (they are its `rooms`)."""
        broker = Broker(bus or await self.bus(name), self.store, self.subjects)
        if resume:
            await broker.resume()
        if crashes:
            setattr(broker, "_shutdown", _crash)  # noqa: B010 (an instance override)
        scope = anyio.CancelScope()
        await tg.start(_serve, broker, scope)
        return broker, scope

    async def open_room(
        self,
        tg: TaskGroup,
        broker: Broker,
        started: NegotiationStarted,
        buyer: BuyerBrain,
        sellers: Mapping[str, SellerBrain],
    ) -> AgentActor:
        """Run the buyer ("buyer") and the sellers by agent id, wait until the broker knows
        them all, and open the room with it; returns the buyer's actor."""
        actor = AgentActor(await self.bus("buyer"), self.subjects, "buyer", buyer, "buyer")
        await tg.start(actor.run)
        for agent_id, brain in sellers.items():
            seller = AgentActor(await self.bus(agent_id), self.subjects, agent_id, brain, "seller")
            await tg.start(seller.run)
        await broker.joined({"buyer", *sellers})
        await broker.open(started)
        return actor

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for bus in self.buses:
                await bus.close()
