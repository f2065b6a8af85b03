"""The quality monitor as an observer actor on the real bus and log.

It grades rooms live from the committed events; what it records must be exactly what
`check()` finds over the stored stream, kept in the companion stream (the negotiation's own
stream is untouched), once, even when the monitor joins late or sees a room twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest
from rich.console import Console

from mams.actors.brains.base import BuyerBrain, SellerBrain, SellerDecision
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.galileo import export_negotiation
from mams.actors.market import RunOptions, build_started, run_rooms
from mams.actors.monitor import QualityMonitor, galileo_hook, grade_stored, stored_flags
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.cli_render import print_flag
from mams.domain.events import QualityFlagged, encode_event, event_type, observation_stream_id
from mams.domain.guardrails import Violation
from mams.domain.messages import CommittedEvent, Say, WalkAway, encode_committed
from mams.domain.negotiation import replay
from mams.domain.quality import check
from mams.domain.views import SellerView
from mams.storage.audit import audit_stream
from mams.storage.eventstore import InMemoryEventStore, PostgresEventStore
from mams.storage.model import NewEvent
from tests.domain.helpers import Room, buyer_turn, seller_turn, started
from tests.integration.helpers import logged
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

Store = tuple[asyncpg.Pool, PostgresEventStore]
LEAKER = "techmart"


class CostLeaker:
    """A baseline seller that also tells the buyer what it paid (its private cost)."""

    label = "leaky seller"

    def __init__(self) -> None:
        self.inner = BaselineSeller()

    async def decide(self, view: SellerView) -> SellerDecision:
        decision = await self.inner.decide(view)
        text = f"{decision.text} Between us, I paid ${view.terms.cost_price} for each."
        return msgspec.structs.replace(decision, text=text)

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        return await self.inner.repair(view, rejected, problems)


async def _market(
    nats_url: str,
    store: PostgresEventStore,
    subjects: Subjects,
    seed: int,
    *,
    leaky: bool,
    on_flag: Callable[[QualityFlagged], None] | None = None,
) -> list[uuid.UUID]:
    scenario = phone()
    options = RunOptions(seed=seed, round_timeout=10)
    session = uuid.uuid4()
    starts = [build_started(scenario, session, item, options) for item in scenario.buyer.items]
    brains: dict[str, BuyerBrain | SellerBrain] = {scenario.buyer.agent_id: BaselineBuyer()}
    for seller in scenario.sellers:
        brains[seller.agent_id] = (
            CostLeaker() if leaky and seller.agent_id == LEAKER else BaselineSeller()
        )

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=name)

    rooms = await run_rooms(
        starts,
        brains,
        connect=connect,
        store=store,
        subjects=subjects,
        monitor=True,
        on_flag=on_flag,
    )
    return [r.negotiation_id for r in rooms]


async def test_live_flags_are_the_checks_over_the_stored_log(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    announced: list[QualityFlagged] = []
    rooms = await _market(nats_url, store, subjects, seed=5, leaky=True, on_flag=announced.append)
    assert announced, "each finding is announced as it fires"
    assert sorted(announced, key=str) == sorted(
        [f for nid in rooms for f in await stored_flags(store, nid)], key=str
    )
    console = Console(record=True, width=200)
    print_flag(console, announced[0])
    assert f"! {announced[0].severity} {announced[0].rule}:" in console.export_text()
    leaks = 0
    for nid in rooms:
        events = await logged(store, nid)
        live = await stored_flags(store, nid)
        assert live == check(events)
        leaks += sum(f.rule == "leakage.seller_cost" and f.agent == LEAKER for f in live)
        assert all(f.severity == "high" for f in live if f.rule == "leakage.seller_cost")
        # The negotiation's own stream is exactly what the broker wrote: it replays and
        # audits clean, and holds no observation.
        assert replay(events).phase == "ended"
        stored = await store.read(nid)
        assert all(not row.type.startswith(("quality.", "analysis.")) for row in stored)
        assert audit_stream(nid, stored, expect_ended=True).ok
        # Grading again on demand records nothing new.
        before = len(await store.read(observation_stream_id(nid)))
        assert await grade_stored(store, nid) == live
        assert len(await store.read(observation_stream_id(nid))) == before
    assert leaks >= 1, "the leaky seller's cost must be flagged"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_baseline_brains_are_neither_hallucinating_nor_leaking(
    nats_url: str, pg_store: Store, subjects: Subjects, seed: int
) -> None:
    # The rule brains only ever write their committed prices: a flag here is a false
    # positive of a check.
    _, store = pg_store
    for nid in await _market(nats_url, store, subjects, seed=seed, leaky=False):
        kinds = {f.kind for f in await stored_flags(store, nid)}
        assert not kinds & {"price_hallucination", "leakage"}, kinds


async def test_a_monitor_joining_late_catches_up_from_the_store_and_records_once(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    nid = (await _market(nats_url, store, subjects, seed=5, leaky=True))[0]
    events = await logged(store, nid)
    expected = check(events)
    assert expected
    # A second, fresh monitor (in memory bus, real store) sees only the last event.
    late = QualityMonitor(InMemoryBus(), store, subjects)
    last = CommittedEvent(negotiation_id=nid, seq=len(events), event=events[-1])
    found = await late.observe(last)
    assert found == expected
    assert late.stats.caught_up == 1
    assert late.stats.recorded == 0  # the live monitor had recorded them all
    assert await late.observe(last) == []  # a duplicate delivery changes nothing
    assert await stored_flags(store, nid) == expected


async def _stored_walk_away() -> tuple[Room, InMemoryEventStore, uuid.UUID]:
    """A room where the buyer leaks its budget, then walks away from $12 offers; stored."""
    room = Room()
    room.ok(buyer_turn(1, Say(text="My budget is $14. Best price?")))
    for agent in ("alpha", "beta", "gamma"):
        room.ok(seller_turn(agent, 1, "I can do $12 each.", Decimal("12.00")))
    room.ok(buyer_turn(2, WalkAway(text="No thanks.")))
    store = InMemoryEventStore()
    nid = room.events[0].negotiation_id  # type: ignore[union-attr]
    await store.append(
        [
            NewEvent(nid, i, uuid.uuid4(), event_type(e), encode_event(e))
            for i, e in enumerate(room.events, 1)
        ]
    )
    return room, store, nid


async def test_settle_finishes_a_room_whose_end_never_reached_the_monitor() -> None:
    room, store, nid = await _stored_walk_away()
    monitor = QualityMonitor(InMemoryBus(), store, Subjects(prefix="unused"))
    # Only the opening arrives live; the rest was lost on the way.
    await monitor.observe(CommittedEvent(negotiation_id=nid, seq=1, event=room.events[0]))
    await monitor.settle([nid], wait=0.05)
    assert monitor.stats.ended == 1
    assert [f.rule for f in await stored_flags(store, nid)] == [
        "leakage.buyer_max",
        "coherence.walked_away_from_acceptable",
    ]


async def test_at_a_rooms_end_the_monitor_exports_it_to_galileo_with_its_flags(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    nid = (await _market(nats_url, store, subjects, seed=5, leaky=True))[0]
    expected = await stored_flags(store, nid)
    assert expected
    sent: list[dict[str, Any]] = []

    def hook(request: Any) -> None:  # the galileo SDK's ingestion hook: what it would send
        sent.append(request.model_dump(mode="json"))

    async def export(negotiation_id: uuid.UUID, flags: list[QualityFlagged]) -> None:
        assert flags == expected  # recorded before the hook runs
        assert await export_negotiation(store, negotiation_id, env={}, ingestion_hook=hook)

    monitor = QualityMonitor(InMemoryBus(), store, subjects, on_ended=export)
    await monitor.settle([nid], wait=0)
    [request] = sent
    [trace] = request["traces"]
    metadata = trace["user_metadata"]
    assert metadata["flags"] == str(len(expected))
    assert galileo_hook(store, env={}) is None
    assert galileo_hook(store, env={"GALILEO_API_KEY": "k"}) is not None


async def test_a_monitor_serving_forever_forgets_old_finished_rooms() -> None:
    store = InMemoryEventStore()
    monitor = QualityMonitor(InMemoryBus(), store, Subjects(prefix="unused"), keep_ended=2)
    nids = []
    for _ in range(4):
        room = Room(msgspec.structs.replace(started(), negotiation_id=uuid.uuid4()))
        room.ok(buyer_turn(1, WalkAway(text="Bye.")))
        nid = room.events[0].negotiation_id  # type: ignore[union-attr]
        nids.append(nid)
        for seq, event in enumerate(room.events, 1):
            await monitor.observe(CommittedEvent(negotiation_id=nid, seq=seq, event=event))
    assert monitor.stats.ended == 4
    assert set(monitor._done) == set(nids[-2:])
    assert not monitor._rooms


async def test_a_room_whose_last_events_were_never_delivered_is_finished_by_the_sweep() -> None:
    # A broker killed between its commit and its publish loses the delivery of committed
    # events; when nothing more comes for that room, the idle sweep reads the store.
    room, store, nid = await _stored_walk_away()
    monitor = QualityMonitor(InMemoryBus(), store, Subjects(prefix="unused"))
    live = len(room.events) - 2  # the walk-away and the end never arrive
    for seq, event in enumerate(room.events[:live], 1):
        await monitor.observe(CommittedEvent(negotiation_id=nid, seq=seq, event=event))
    assert monitor.stats.ended == 0
    assert await monitor.sweep(older_than=60) == 0  # not idle yet: nothing read
    assert await monitor.sweep(older_than=0) == 1
    assert [f.rule for f in await stored_flags(store, nid)] == [
        "leakage.buyer_max",
        "coherence.walked_away_from_acceptable",
    ]
    # The end arriving late after all changes nothing.
    last = CommittedEvent(negotiation_id=nid, seq=len(room.events), event=room.events[-1])
    assert await monitor.observe(last) == []
    assert monitor.stats.ended == 1


async def test_a_stopping_monitor_grades_from_the_store_what_its_open_rooms_missed() -> None:
    # `mams monitor` stopped (SIGTERM) before the idle sweep came round: the room whose
    # last deliveries were lost is still finished, its flags recorded.
    room, store, nid = await _stored_walk_away()
    bus = InMemoryBus()
    subjects = Subjects(prefix="stop")
    monitor = QualityMonitor(bus, store, subjects)
    live = len(room.events) - 2  # the walk-away and the end never arrive
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        for seq, event in enumerate(room.events[:live], 1):
            await bus.publish(
                subjects.events(nid),
                encode_committed(CommittedEvent(negotiation_id=nid, seq=seq, event=event)),
            )
        with anyio.fail_after(5):
            while monitor.stats.events < live:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert monitor.stats.ended == 0
        tg.cancel_scope.cancel()
    assert monitor.stats.ended == 1
    assert [f.rule for f in await stored_flags(store, nid)] == [
        "leakage.buyer_max",
        "coherence.walked_away_from_acceptable",
    ]
