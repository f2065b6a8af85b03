"""What one agent can make the broker do, over real NATS and real PostgreSQL: it cannot
configure a market it was not allowed to, cost the market without bound, flood it with
hellos, or take the broker down with a value the database refuses.

Each test fails on the broker before the hardening issue: an inline scenario from any
agent was accepted, room options were unbounded, every hello was answered, and a group
commit the database refused escaped the commit loop and stopped the broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest
import structlog.testing

from mams.actors.broker import Broker, open_stream_ids
from mams.actors.hellos import HELLO_BURST, HELLO_EVERY
from mams.actors.market import RunOptions
from mams.bus.base import Subscription
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import scenario_to_raw
from mams.domain.events import (
    NegotiationStarted,
    Offer,
    QualityFlagged,
    RoundOpened,
    SellerReplied,
    encode_event,
    observation_stream_id,
)
from mams.domain.messages import (
    Hello,
    OpenRooms,
    Rejected,
    RoomsOpened,
    SellerTurn,
    Welcome,
    decode_inbox,
    encode,
)
from mams.domain.negotiation import FromAgent
from mams.storage.eventstore import PostgresEventStore
from mams.storage.model import NewEvent
from mams.storage.readmodels import save_session
from tests.integration.helpers import (
    BrokerRig,
    MemorySessions,
    broker_rig,
    logged,
    of_type,
    started_for,
)
from tests.integration.scenarios import phone
from tests.integration.test_broker_robustness import say

pytestmark = pytest.mark.integration

Store = tuple[asyncpg.Pool, PostgresEventStore]
BUYER, SELLER = "buyer", "techmart"
ITEM = "iPhone 15 case"
CALM = RunOptions(max_rounds=6, seed=1, round_timeout=60.0)  # no deadline fires in a test


async def answer(rig: BrokerRig, inbox: Subscription, agent: str, request: OpenRooms) -> object:
    """Send `request` on `agent`'s outbox; its RoomsOpened or Rejected from the inbox."""
    await rig.send(agent, request)
    async for msg in inbox:
        m = decode_inbox(msg.data)
        if isinstance(m, RoomsOpened | Rejected) and m.request_id == request.request_id:
            return m
    raise AssertionError("the inbox closed")


async def until(condition: Callable[[], bool]) -> None:
    """Until `condition()` holds (callers bound it with fail_after)."""
    while not condition():  # noqa: ASYNC110 (polling a counter or the captured logs)
        await anyio.sleep(0.01)


async def opened_in(rig: BrokerRig, nid: UUID) -> None:
    """Until room `nid`'s first round is committed."""
    while True:
        committed = await rig.next_committed()
        if committed.negotiation_id == nid and isinstance(committed.event, RoundOpened):
            return


def scenario_as(buyer_handle: str) -> dict[str, object]:
    """The phone scenario with the buyer renamed (a seller naming itself the buyer)."""
    raw = scenario_to_raw(phone())
    buyer = raw["buyer"]
    assert isinstance(buyer, dict)
    buyer["handle"] = buyer_handle
    return raw


async def test_only_a_configurer_may_send_a_whole_scenario(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    with anyio.fail_after(30):
        async with broker_rig(nats_url, store, subjects) as rig:
            sessions = rig.broker.sessions = MemorySessions()
            rig.broker.configurers = frozenset({BUYER})
            seller_inbox = await rig.raw.subscribe(subjects.inbox(AgentId(SELLER)))
            buyer_inbox = await rig.raw.subscribe(subjects.inbox(AgentId(BUYER)))
            with structlog.testing.capture_logs() as logs:
                # A seller names itself the buyer and writes its rivals' floors: refused.
                forged = OpenRooms(request_id=uuid.uuid4(), scenario=scenario_as("@TechMart"))
                refused = await answer(rig, seller_inbox, SELLER, forged)
            assert isinstance(refused, Rejected)
            assert "allowed to configure markets" in refused.reason
            assert any(e.get("reason") == refused.reason for e in logs)
            assert sessions.saved == {}
            # The real buyer, named by the operator, may.
            request = OpenRooms(request_id=uuid.uuid4(), scenario=scenario_to_raw(phone()))
            opened = await answer(rig, buyer_inbox, BUYER, request)
            assert isinstance(opened, RoomsOpened)
            # A stored session opens only for its own buyer, never for a seller.
            stolen = OpenRooms(request_id=uuid.uuid4(), session_id=opened.session_id)
            refused = await answer(rig, seller_inbox, SELLER, stolen)
            assert isinstance(refused, Rejected)
            assert "only the session's buyer (@Buyer)" in refused.reason
    streams = await store.stream_ids()
    assert sorted(streams) == sorted(opened.negotiation_ids)  # nothing the seller asked for


LIMITS = {
    "max_rounds_int4": ({"max_rounds": 2**31}, "max_rounds must be from 2 to 100"),
    "max_rounds_one": ({"max_rounds": 1}, "max_rounds must be from 2 to 100"),
    "timeout_huge": ({"round_timeout": 1e16}, "round_timeout must be from"),
    "timeout_tiny": ({"round_timeout": 0.001}, "round_timeout must be from"),
    # JSON has no infinity, but 1e999 decodes to one.
    "timeout_infinite": ({"round_timeout": 7.25}, "round_timeout"),
    "seed_bigint": ({"seed": 2**62 + 1, "runs": 2}, "seed must be from"),
    "too_many_rooms": ({"runs": 6000}, "more than 10000 rooms in one plan"),
}


@pytest.mark.parametrize("case", list(LIMITS))
async def test_room_options_that_would_cost_the_market_without_bound_are_refused(
    case: str, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    fields, reason = LIMITS[case]
    with anyio.fail_after(30):
        async with broker_rig(nats_url, store, subjects) as rig:
            rig.broker.sessions = MemorySessions()
            rig.broker.configurers = frozenset({BUYER})
            inbox = await rig.raw.subscribe(subjects.inbox(AgentId(BUYER)))
            raw = scenario_to_raw(phone())  # 2 items: 6000 runs are 12,000 rooms
            request = OpenRooms(request_id=uuid.uuid4(), scenario=raw, **fields)  # type: ignore[arg-type]
            data = encode(request).replace(b'"round_timeout":7.25', b'"round_timeout":1e999')
            await rig.send(BUYER, data)
            refused = None
            async for msg in inbox:
                m = decode_inbox(msg.data)
                if isinstance(m, Rejected | RoomsOpened):
                    refused = m
                    break
            assert isinstance(refused, Rejected), refused
            assert reason in refused.reason
            # The market still serves: a reasonable request from the same buyer opens.
            ok = OpenRooms(request_id=uuid.uuid4(), scenario=raw, max_rounds=4)
            assert isinstance(await answer(rig, inbox, BUYER, ok), RoomsOpened)
    assert await store.stream_ids()  # only the reasonable request's rooms
    for nid in await store.stream_ids():
        (started, *_) = await logged(store, nid)
        assert isinstance(started, NegotiationStarted)
        assert started.max_rounds == 4


async def test_open_rooms_sent_again_opens_nothing_twice_even_across_brokers(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    pool, store = pg_store
    raw = scenario_to_raw(phone())
    request = OpenRooms(request_id=uuid.uuid4(), scenario=raw, runs=2, max_rounds=4)
    sessions = MemorySessions()
    replies: list[RoomsOpened] = []
    for _ in range(2):  # the second broker is the first one restarted (a crash)
        with anyio.fail_after(30):
            async with broker_rig(nats_url, store, subjects) as rig:
                rig.broker.sessions = sessions
                rig.broker.configurers = frozenset({BUYER})
                await rig.broker.resume(await open_stream_ids(pool))
                inbox = await rig.raw.subscribe(subjects.inbox(AgentId(BUYER)))
                for _ in range(2):  # and the buyer sends it twice to each
                    got = await answer(rig, inbox, BUYER, request)
                    assert isinstance(got, RoomsOpened)
                    replies.append(got)
    assert len({r.negotiation_ids for r in replies}) == 1
    assert len({r.session_id for r in replies}) == 1
    assert len(sessions.saved) == 1
    ids = replies[0].negotiation_ids
    assert len(ids) == 2 * 2
    assert sorted(await store.stream_ids()) == sorted(ids)
    for nid in ids:
        events = await logged(store, nid)
        assert len(of_type(events, NegotiationStarted)) == 1
        assert len(of_type(events, RoundOpened)) == 1


async def test_a_hello_flood_is_answered_at_a_bounded_rate(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    flood = 3000
    with anyio.fail_after(60):
        async with broker_rig(nats_url, store, subjects) as rig:
            inbox = await rig.raw.subscribe(subjects.inbox(AgentId(SELLER)), max_pending=100_000)
            hello = encode(Hello(role="seller", brain="flood"))
            t0 = anyio.current_time()
            for _ in range(flood):
                await rig.raw.publish(subjects.outbox(AgentId(SELLER)), hello)
            await rig.raw.flush()
            # Every hello read (received counts them as they arrive, before any answer).
            await until(lambda: rig.broker.stats.received >= flood)
            elapsed = anyio.current_time() - t0
            # An honest room still opens and is served after the flood.
            started = started_for(phone(), ITEM, CALM)
            await rig.open(started)
            await opened_in(rig, started.negotiation_id)
            # The flooder's hellos are dropped unread for a while (BufferedSubscription.admit);
            # its turns never are, even one whose text is "hello".
            nid = started.negotiation_id
            await rig.says(BUYER, say(nid, 1))
            turn = SellerTurn(negotiation_id=nid, round=1, message_id=uuid.uuid4(), text="hello")
            await rig.send(SELLER, turn)
            replied = await rig.wait_for(SellerReplied)
            assert (replied.seller, replied.message_id) == (SELLER, turn.message_id)
            welcomes = 0
            while True:
                with anyio.move_on_after(0.5):
                    msg = await inbox.__anext__()
                    if isinstance(decode_inbox(msg.data), Welcome):
                        welcomes += 1
                    continue
                break
    # The token bucket: a burst, then one per HELLO_EVERY; one more may be pending.
    assert 1 <= welcomes <= HELLO_BURST + elapsed / HELLO_EVERY + 2, (welcomes, elapsed)
    assert welcomes < flood / 10


async def test_a_value_the_database_refuses_costs_only_its_command(
    nats_url: str, db: Store, subjects: Subjects
) -> None:
    pool, store = db  # with the read models: their columns are what refuses
    session = uuid.uuid4()
    async with pool.acquire() as conn:
        await save_session(conn, session, phone())
    started = started_for(phone(), ITEM, CALM, session)
    nid = started.negotiation_id
    # int4 in the read model: opened through the operator's API, past every bus check.
    unstorable = msgspec.structs.replace(
        started_for(phone(), ITEM, CALM, session), max_rounds=2**31, negotiation_id=uuid.uuid4()
    )
    with anyio.fail_after(30):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(unstorable)
            await rig.open(started)
            await opened_in(rig, nid)
            # The rooms may take different commit lanes: wait until the refused one is gone.
            await until(lambda: unstorable.negotiation_id not in rig.broker.rooms)
            await rig.says(BUYER, say(nid, 1))
            # A seller's offer the database cannot hold (numeric(12,2)) reaches the broker
            # as if it had passed every check at the boundary: only it is lost.
            bad = _offer(nid, "9999999999.999")
            await rig.broker._commands[0].send((nid, FromAgent(agent=SELLER, turn=bad)))
            good = _offer(nid, "12.00")
            # Decided before the refusal came back, the good turn may meet the refused
            # state ("already answered") and be dropped: the seller sends it again, as
            # PROTOCOL.md asks of a turn the broker still owes (same message id).
            replied = None
            while replied is None:
                await rig.send(SELLER, good)
                with anyio.move_on_after(1.0):
                    replied = await rig.wait_for(SellerReplied)
            assert replied.message_id == good.message_id
            assert replied.offer == Offer(unit_price=Decimal("12.00"), quantity=2)
    assert unstorable.negotiation_id not in await store.stream_ids()
    events = await logged(store, nid)
    assert [r.message_id for r in of_type(events, SellerReplied)] == [good.message_id]


def _offer(nid: UUID, price: str) -> SellerTurn:
    return SellerTurn(
        negotiation_id=nid,
        round=1,
        message_id=uuid.uuid4(),
        text="my price",
        offer=Offer(unit_price=Decimal(price), quantity=2),
    )


async def test_resume_passes_over_the_observers_companion_streams(pg_store: Store) -> None:
    pool, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    # The room's opening, and a quality flag the monitor recorded in its companion stream.
    await store.append(
        [NewEvent(nid, 1, uuid.uuid4(), "negotiation.started", encode_event(started))]
    )
    flag = QualityFlagged(
        negotiation_id=nid,
        kind="leakage",
        rule="leakage.seller_cost",
        severity="high",
        agent=SELLER,
        round=1,
        evidence=("seq:1",),
        detail="revealed its cost",
    )
    companion = observation_stream_id(nid)
    await store.append(
        [NewEvent(companion, 1, uuid.uuid4(), "quality.flagged", encode_event(flag))]
    )
    fresh = Broker(InMemoryBus(), store, Subjects(prefix="resume"), abort_on_shutdown=False)
    candidates = await open_stream_ids(pool)
    assert companion not in candidates
    assert await fresh.resume(candidates, resync=False) == [nid]
    # Asked to resume every stream of the store, it passes over the companion too.
    again = Broker(InMemoryBus(), store, Subjects(prefix="resume"), abort_on_shutdown=False)
    assert await again.resume(None, resync=False) == [nid]
    for broker in (fresh, again):  # run and stopped: its streams are closed
        async with anyio.create_task_group() as tg:
            await tg.start(broker.run)
            tg.cancel_scope.cancel()
