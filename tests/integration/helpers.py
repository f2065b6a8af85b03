"""Helpers for integration tests over real NATS and real PostgreSQL.

- `nats_connect`: the `connect` callable run_market wants, one connection per name.
- `logged`: the decoded events of one stream, as the log holds them.
- `BrokerRig`: a Broker on its own connection, driven by hand with raw publishes on any
  agent's outbox subject, observed through the committed-events subject.
- `run_cast`: run_market's shape with brains of the test's choosing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import anyio
import msgspec
from anyio.abc import TaskStatus

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.broker import Broker
from mams.actors.market import RoomResult, RunOptions, build_started
from mams.bus.base import Bus, Subscription
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import BuyerItem, Scenario
from mams.domain.events import BuyerSaid, Event, NegotiationStarted, decode_event
from mams.domain.messages import (
    BuyerTurn,
    CommittedEvent,
    OutboxMessage,
    decode_committed,
    encode,
)
from mams.domain.negotiation import evolve
from mams.storage.eventstore import EventStore

E = TypeVar("E")


def nats_connect(nats_url: str) -> Callable[[str], Awaitable[Bus]]:
    """A `connect(name)` for run_market: a fresh NATS connection per actor."""

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=name)

    return connect


async def logged(store: EventStore, nid: UUID) -> list[Event]:
    """The events of stream `nid` in seq order, decoded; asserts seqs are 1..n."""
    stored = await store.read(nid)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    return [decode_event(e.data) for e in stored]


def of_type(events: Sequence[object], kind: type[E]) -> list[E]:
    """The events of one class, in order."""
    return [e for e in events if isinstance(e, kind)]


def json_keys(value: Any) -> set[str]:
    """Every object key anywhere in a decoded JSON value."""
    keys: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            keys.add(k)
            keys |= json_keys(v)
    elif isinstance(value, list):
        for v in value:
            keys |= json_keys(v)
    return keys


def json_leaves(value: Any) -> list[Any]:
    """Every scalar anywhere in a decoded JSON value."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in json_leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in json_leaves(v)]
    return [value]


def raw_json(data: bytes) -> Any:
    """Raw wire bytes as plain JSON values (no schema)."""
    return msgspec.json.decode(data)


@dataclass
class BrokerRig:
    """A live Broker plus a raw connection that may publish as any agent."""

    broker: Broker
    subjects: Subjects
    raw: Bus
    feed: Subscription
    store: EventStore
    committed: list[CommittedEvent] = field(default_factory=list)
    _scope: anyio.CancelScope | None = None
    _stopped: anyio.Event = field(default_factory=anyio.Event)

    async def send(self, agent: str, payload: OutboxMessage | bytes) -> None:
        """Publish on `agent`'s outbox subject (the only thing that names the sender)."""
        data = payload if isinstance(payload, bytes) else encode(payload)
        await self.raw.publish(self.subjects.outbox(AgentId(agent)), data)
        await self.raw.flush()

    async def says(self, agent: str, turn: BuyerTurn, *, again_after: float = 2.0) -> BuyerSaid:
        """Send a buyer turn and wait until the broker has committed it (its BuyerSaid),
        sending it again (same message id) if it has not after `again_after` seconds, as an
        agent re-sends a turn the broker still owes: once in a while a message published
        right after a room opens is not seen, and tests must not hang on that."""
        while True:
            await self.send(agent, turn)
            with anyio.move_on_after(again_after):
                return await self.wait_for(BuyerSaid, lambda e: e.message_id == turn.message_id)

    async def open(self, started: NegotiationStarted) -> None:
        """Open a room through the broker's public API."""
        await self.broker.open(started)

    async def next_committed(self) -> CommittedEvent:
        """The next committed event the broker publishes to observers."""
        msg = await self.feed.__anext__()
        committed = decode_committed(msg.data)
        self.committed.append(committed)
        return committed

    async def wait_for(self, kind: type[E], pred: Callable[[E], bool] = lambda _: True) -> E:
        """Read the observers' subject until an event of `kind` satisfying `pred` arrives."""
        while True:
            event = (await self.next_committed()).event
            if isinstance(event, kind) and pred(event):
                return event

    async def stop(self) -> None:
        """Cancel the broker's run (its whole task group) and wait until it has returned."""
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


async def _serve(rig: BrokerRig, *, task_status: TaskStatus[None]) -> None:
    try:
        with anyio.CancelScope() as scope:
            rig._scope = scope
            await rig.broker.run(task_status=task_status)
    finally:
        rig._stopped.set()


@asynccontextmanager
async def broker_rig(
    nats_url: str, store: EventStore, subjects: Subjects
) -> AsyncIterator[BrokerRig]:
    """A running Broker (own connection) and a raw publisher/observer (another one)."""
    broker_bus = await NatsBus.connect(nats_url, name="broker")
    raw = await NatsBus.connect(nats_url, name="raw")
    try:
        feed = await raw.subscribe(subjects.all_events(), max_pending=100_000)
        rig = BrokerRig(Broker(broker_bus, store, subjects), subjects, raw, feed, store)
        async with anyio.create_task_group() as tg:
            await tg.start(_serve, rig)
            try:
                yield rig
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for bus in (raw, broker_bus):
                with suppress(Exception):
                    await bus.close()


def started_for(
    scenario: Scenario, item_name: str, options: RunOptions, session_id: UUID | None = None
) -> NegotiationStarted:
    """The NegotiationStarted run_market would open for one buyer item."""
    item = scenario.buyer_item(item_name)
    return build_started(scenario, session_id or uuid.uuid4(), item, options)


async def run_cast(
    scenario: Scenario,
    items: Sequence[BuyerItem],
    *,
    nats_url: str,
    store: EventStore,
    subjects: Subjects,
    options: RunOptions,
    buyer_brain: BuyerBrain,
    seller_brains: Mapping[str, SellerBrain],
    seen: list[tuple[UUID, Event]] | None = None,
) -> list[RoomResult]:
    """run_market's cast (broker, buyer, every involved seller, each on its own NATS
    connection) with the brains given; returns when every room has ended."""
    session_id = uuid.uuid4()
    rooms = [RoomResult(negotiation_id=uuid.uuid4(), item_name=i.item_name) for i in items]
    by_id = {r.negotiation_id: r for r in rooms}
    involved = {s.agent_id for i in items for s in scenario.sellers_of(i.item_name)}
    buses: list[Bus] = []

    async def bus_for(name: str) -> Bus:
        bus = await NatsBus.connect(nats_url, name=name)
        buses.append(bus)
        return bus

    try:
        async with anyio.create_task_group() as tg:
            observer = await bus_for("observer")
            feed = await observer.subscribe(subjects.all_events(), max_pending=100_000)
            broker = Broker(await bus_for("broker"), store, subjects)
            await tg.start(broker.run)
            buyer_id = scenario.buyer.agent_id
            buyer = AgentActor(await bus_for(buyer_id), subjects, buyer_id, buyer_brain, "buyer")
            await tg.start(buyer.run)
            for agent_id in sorted(involved):
                actor = AgentActor(
                    await bus_for(agent_id), subjects, agent_id, seller_brains[agent_id], "seller"
                )
                await tg.start(actor.run)
            for room, item in zip(rooms, items, strict=True):
                await broker.open(
                    build_started(scenario, session_id, item, options, room.negotiation_id)
                )
            open_rooms = set(by_id)
            async for msg in feed:
                committed = decode_committed(msg.data)
                result = by_id.get(committed.negotiation_id)
                if result is None:
                    continue
                if seen is not None:
                    seen.append((result.negotiation_id, committed.event))
                result.state = evolve(result.state, committed.event)
                if result.state.phase == "ended":
                    open_rooms.discard(result.negotiation_id)
                    if not open_rooms:
                        break
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for bus in buses:
                with suppress(Exception):
                    await bus.close()
    return rooms


class MemorySessions:
    """A SessionStore in memory: what open_rooms stores and loads."""

    def __init__(self) -> None:
        self.saved: dict[UUID, Scenario] = {}

    async def load(self, session_id: UUID) -> Scenario | None:
        return self.saved.get(session_id)

    async def save(self, session_id: UUID, scenario: Scenario) -> None:
        self.saved[session_id] = scenario
