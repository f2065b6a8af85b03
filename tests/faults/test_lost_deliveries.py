"""What a crashed broker committed but never published, and turns sent while no broker
listened, still reach their recipients (real NATS and PostgreSQL, in-process actors).

(a) The broker commits a seller's answer (and the round-2 turn it completes) and dies
    before publishing them. The next broker resumes the room and, before anything else and
    without waiting for a hello, re-sends the buyer its catch-up: the buyer decides round 2
    knowing every offer the log holds, each folded once.
(b) A seller answers while no broker is running: its turn is lost on the bus. The next
    broker re-sends the buyer message it is still owed; the seller publishes the same turn
    again (same message id, decided once) and the log gets it.
"""

from __future__ import annotations

from collections import Counter

import anyio
import asyncpg
import pytest

from mams.actors.brains.base import BuyerDecision, SellerDecision
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.bus.subjects import AgentId, Subjects
from mams.domain.events import RoundOpened, SellerReplied
from mams.domain.messages import SellerTurn, decode_outbox
from mams.domain.negotiation import replay
from mams.domain.views import BuyerView, SellerView
from mams.storage.eventstore import PostgresEventStore
from tests.faults.rig import HandBus, Rig, phone_room
from tests.faults.test_broker_crash import poll
from tests.integration.helpers import logged, of_type

pytestmark = pytest.mark.integration


class RecordingBuyer(BaselineBuyer):
    """The baseline buyer, keeping the view it decided each round on."""

    def __init__(self) -> None:
        self.views: dict[int, BuyerView] = {}

    async def decide(self, view: BuyerView) -> BuyerDecision:
        self.views[view.round] = view
        return await super().decide(view)


class GatedSeller(BaselineSeller):
    """The baseline seller, but its round-1 answer waits for `release`; counts decisions."""

    def __init__(self) -> None:
        self.waiting = anyio.Event()
        self.release = anyio.Event()
        self.decisions: Counter[int] = Counter()  # by round

    async def decide(self, view: SellerView) -> SellerDecision:
        self.decisions[view.round] += 1
        if view.round == 1:
            self.waiting.set()
            await self.release.wait()
        return await super().decide(view)


async def test_an_answer_committed_but_never_published_reaches_the_buyer_before_its_turn(
    nats_url: str, pg_store: tuple[asyncpg.Pool, PostgresEventStore], subjects: Subjects
) -> None:
    _, store = pg_store
    started, sellers = phone_room(seed=3)
    nid = started.negotiation_id
    late = sellers[-1]
    gate = GatedSeller()
    recorder = RecordingBuyer()
    rig = Rig(nats_url, store, subjects)

    async def others_answered() -> bool:
        replied = {e.seller for e in of_type(await logged(store, nid), SellerReplied)}
        return replied == set(sellers) - {late}

    async def round_two() -> bool:
        events = await logged(store, nid)
        return any(isinstance(e, RoundOpened) and e.round == 2 for e in events)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                lossy = HandBus(await rig.bus("broker-1"))
                first, crash = await rig.broker(tg, "broker-1", bus=lossy)
                brains = {a: gate if a == late else BaselineSeller() for a in sellers}
                buyer = await rig.open_room(tg, first, started, recorder, brains)
                await gate.waiting.wait()
                await poll(others_answered)
                await poll(lambda: len(buyer.buyer_views[nid].offers) == len(sellers) - 1)

                # The broker commits the late answer and round 2, then dies unpublished.
                lossy.cut = True
                gate.release.set()
                await poll(round_two)
                crash.cancel()
                assert late not in buyer.buyer_views[nid].offers  # the delivery was lost
                assert 2 not in recorder.views

                second, _ = await rig.broker(tg, "broker-2", crashes=False, resume=True)
                assert list(second.rooms) == [nid]  # and no hello is sent
                await poll(lambda: 2 in recorder.views)
                tg.cancel_scope.cancel()
    finally:
        await rig.close()

    events = await logged(store, nid)
    at_round_two = replay(events[: 1 + events.index(RoundOpened(round=2, final=False))])
    view = recorder.views[2]
    assert dict(view.offers) == dict(at_round_two.offers)
    assert set(view.offers) == set(sellers)
    said = Counter(line.speaker for line in view.history if line.round == 1)
    handles = {s.handle for s in started.sellers}
    assert {h: said[h] for h in handles} == dict.fromkeys(handles, 1)  # each folded once


async def test_a_turn_sent_while_no_broker_listened_is_sent_again_and_logged_once(
    nats_url: str, pg_store: tuple[asyncpg.Pool, PostgresEventStore], subjects: Subjects
) -> None:
    _, store = pg_store
    started, sellers = phone_room(seed=4)
    nid = started.negotiation_id
    late = sellers[0]
    gate = GatedSeller()
    rig = Rig(nats_url, store, subjects)
    lost: list[SellerTurn] = []

    async def late_answer_logged() -> bool:
        events = await logged(store, nid)
        return any(isinstance(e, SellerReplied) and e.seller == late for e in events)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                first, crash = await rig.broker(tg, "broker-1")
                brains = {a: gate if a == late else BaselineSeller() for a in sellers}
                await rig.open_room(tg, first, started, BaselineBuyer(), brains)
                await gate.waiting.wait()
                crash.cancel()  # the broker dies while the late seller decides

                tap_bus = await rig.bus("tap")
                tap = await tap_bus.subscribe(subjects.outbox(AgentId(late)))

                async def read_tap() -> None:
                    async for msg in tap:
                        turn = decode_outbox(msg.data)
                        if isinstance(turn, SellerTurn) and turn.round == 1:
                            lost.append(turn)

                tg.start_soon(read_tap)
                await tap_bus.flush()
                gate.release.set()  # its answer goes out while no broker listens
                await poll(lambda: lost)

                second, _ = await rig.broker(tg, "broker-2", crashes=False, resume=True)
                assert list(second.rooms) == [nid]
                await poll(late_answer_logged)
                await poll(lambda: len(lost) >= 2)  # the tap saw the re-send too
                tg.cancel_scope.cancel()
    finally:
        await rig.close()

    replies = of_type(await logged(store, nid), SellerReplied)
    first_round = [r.message_id for r in replies if r.seller == late and r.round == 1]
    assert first_round == [lost[0].message_id]  # the turn sent into the void, logged once
    assert all(t == lost[0] for t in lost)  # re-sent as it was, not decided again
    assert gate.decisions[1] == 1  # decided once
