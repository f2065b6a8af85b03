"""Fuzz the market's three inbound paths over a real NATS bus and a real PostgreSQL log.

A live market (a Broker with a session store and the read-model projector, the quality
monitor, a baseline buyer and three baseline sellers, each on its own NATS connection)
runs while Hypothesis generates batches of payloads: random JSON of random depth, nesting
far beyond the interpreter's recursion limit, numbers of thousands of digits, and
valid-looking messages with extreme values. Each payload goes where it can do harm:

- the broker: on the outbox of @Mallory, a seller seated in a room of its own (with
  @Bystander), so its turns reach the decision core and the log;
- an agent: on the inbox of @Bystander (as a broker, or a forged publisher, could);
- the monitor: on the committed-events subject (as a broker, or a forged publisher, could).

After each batch a sentinel goes down every path the batch used, and the test waits for
its answer: a `Rejected` from the broker, the agent folding a `Welcome`, the monitor
finishing a room. Messages from one connection arrive in order, so the answer means every
payload before it was handled. Every actor must still be running after each batch; an
honest room opened before and another after the barrage both complete.

Hypothesis runs in a worker thread, each example calling into the test's event loop; its
database is off, so no run depends on an earlier one.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest
from anyio.abc import TaskStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.broker import Broker
from mams.actors.market import RunOptions, build_started
from mams.actors.monitor import QualityMonitor
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import parse_scenario_text
from mams.domain.events import (
    LLMCall,
    NegotiationEnded,
    NegotiationStarted,
    Offer,
    Outcome,
    RoundOpened,
    SellerReplied,
)
from mams.domain.messages import (
    BuyerMessage,
    CommittedEvent,
    GuardrailNote,
    Hello,
    InboxMessage,
    OpenRooms,
    OwnSellerTerms,
    Peer,
    Rejected,
    RoomClosed,
    SellerRoomOpened,
    SellerTurn,
    Welcome,
    decode_committed,
    decode_inbox,
    encode,
    encode_committed,
)
from mams.domain.negotiation import NegotiationState, evolve
from mams.processes import PgSessions
from mams.storage.eventstore import PostgresEventStore

pytestmark = pytest.mark.integration

WAIT = 60.0  # bound on an honest room's run (slow shared CI); never a pause
BARRIER = 10.0  # bound on one batch's sentinels (milliseconds when all is well)
SERVER_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload
ATTACKER, BYSTANDER = "mallory", "bystander"
HONEST = ("techmart", "gadgethub")

MARKET = """
name = "fuzzed market (test)"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "iPhone 15 case"
quantity = 2
min_price = 8.00
max_price = 14.00

[[buyer.items]]
item_name = "Screen protector"
quantity = 4
min_price = 5.00
max_price = 12.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 7.00
selling_price = 18.00
least_price = 11.00

[[sellers]]
handle = "@GadgetHub"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 6.50
selling_price = 16.00
least_price = 10.00

[[sellers]]
handle = "@Mallory"
style = "sweet"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "Screen protector"
cost_price = 2.00
selling_price = 10.00
least_price = 6.00

[[sellers]]
handle = "@Bystander"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "Screen protector"
cost_price = 3.00
selling_price = 11.00
least_price = 7.00
"""


# -- payloads ----------------------------------------------------------------------------------
ints = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**62, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [Decimal(s) for s in ("9999999999.999", "99999999.99", "100000000", "0.001", "12.50")]
    ),
    st.integers(1, 16_000).map(lambda n: Decimal("9" * n)),
)
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e308, -1e308])
texts = st.text(max_size=50) | st.integers(0, 5_000).map(lambda n: "x" * n)
# Long enough to break every text bound, short enough that a turn holding two still fits
# NATS's max_payload (the server itself refuses more, before any MAMS code sees it).
long_texts = texts | st.integers(0, 400_000).map(lambda n: "y" * n)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=25,
)
OUT_TAGS = ("seller.turn", "buyer.turn", "hello", "open_rooms", "say", "accept", "bribe")
IN_TAGS = ("room.opened.seller", "room.opened.buyer", "buyer.message", "room.closed", "recap")
EVENT_TAGS = ("negotiation.started", "seller.replied", "deal.closed", "negotiation.ended")


@st.composite
def random_json(draw: st.DrawFn, tags: tuple[str, ...]) -> bytes:
    """Any JSON value; an object is given a known (or unknown) `type` tag half the time."""
    value = draw(json_values)
    if isinstance(value, dict) and draw(st.booleans()):
        value["type"] = draw(st.sampled_from(tags))
    return msgspec.json.encode(value)


@st.composite
def deep(draw: st.DrawFn, frame: bytes) -> bytes:
    """`frame` (one %s) holding a value nested 50 to 60,000 levels deep."""
    depth = draw(st.integers(50, 60_000))
    if draw(st.booleans()):
        value = b"[" * depth + b"]" * depth
    else:
        value = b'{"a":' * depth + b"1" + b"}" * depth
    return frame % value


def big_number(draw: st.DrawFn) -> bytes:
    return b"9" * draw(st.integers(20, 16_000))


calls = st.builds(
    LLMCall,
    provider=texts,
    model=texts,
    purpose=texts,
    prompt_digest=texts,
    request=texts,
    input_tokens=ints,
    output_tokens=ints,
    latency_ms=floats,
    cost_usd=st.none() | floats,
    retries=ints,
)
notes = st.builds(GuardrailNote, rule=texts, detail=texts, attempted=texts, resolution=texts)


@st.composite
def attacker_payload(draw: st.DrawFn, room: UUID) -> bytes:
    """What @Mallory may publish on its outbox."""
    kind = draw(st.sampled_from(["json", "deep", "turn", "turn_number", "hello", "open_rooms"]))
    if kind == "json":
        return draw(random_json(OUT_TAGS))
    if kind == "deep":
        frames = [
            b'{"type":"hello","role":"seller","brain":"x","extra":%s}',
            b'{"type":"open_rooms","request_id":"%s","scenario":{"name":%%s}}'
            % str(uuid.uuid4()).encode(),
            b"%s",
        ]
        return draw(deep(draw(st.sampled_from(frames))))
    if kind in ("turn", "turn_number"):
        turn = SellerTurn(
            negotiation_id=draw(st.sampled_from([room, uuid.uuid4()])),
            round=draw(st.integers(1, 3) | ints),
            message_id=uuid.uuid4(),
            text=draw(long_texts),
            offer=draw(st.none() | st.builds(Offer, unit_price=decimals, quantity=ints)),
            reasoning=draw(long_texts),
            guardrails=tuple(draw(st.lists(notes, max_size=20))),
            llm_calls=tuple(draw(st.lists(calls, max_size=10))),
        )
        data = encode(turn)
        if kind == "turn_number":  # a JSON number no decimal string spells
            data = data[:-1] + b',"offer":{"unit_price":%s,"quantity":2}}' % big_number(draw)
        return data
    if kind == "hello":
        return encode(Hello(role="seller", brain=draw(texts), protocol=draw(ints)))
    request = OpenRooms(
        request_id=uuid.uuid4(),
        scenario=draw(st.none() | st.dictionaries(st.text(max_size=8), json_values)),
        items=tuple(draw(st.lists(texts, max_size=5))),
        max_rounds=draw(ints),
        round_timeout=draw(floats),
        seed=draw(st.none() | ints),
        runs=draw(st.integers(-2, 3) | ints),
    )
    return encode(request)


@st.composite
def inbox_payload(draw: st.DrawFn, room: UUID) -> bytes:
    """What a forged publisher could put on @Bystander's inbox."""
    kind = draw(st.sampled_from(["json", "deep", "opened", "message", "closed"]))
    nid = draw(st.sampled_from([room, uuid.uuid4()]))
    message: InboxMessage
    if kind == "json":
        return draw(random_json(IN_TAGS))
    if kind == "deep":
        return draw(deep(b'{"type":"welcome","agent_id":"a","rooms":[],"x":%s}'))
    if kind == "opened":
        terms = OwnSellerTerms(
            style=draw(texts),
            customer_retention_weight=draw(decimals),
            profit_maximization_weight=draw(decimals),
            cost_price=draw(decimals),
            selling_price=draw(decimals),
            least_price=draw(decimals),
        )
        message = SellerRoomOpened(
            negotiation_id=nid,
            item_name=draw(texts),
            quantity=draw(ints),
            buyer=Peer(agent_id="buyer", handle=draw(texts)),
            terms=terms,
            max_rounds=draw(ints),
            round_timeout=draw(floats),
            seed=draw(st.none() | ints),
        )
    elif kind == "message":
        message = BuyerMessage(
            negotiation_id=nid,
            round=draw(ints),
            message_id=uuid.uuid4(),
            text=draw(texts),
            counter_price=draw(st.none() | decimals),
        )
    else:
        message = RoomClosed(negotiation_id=nid, status="completed", deal=draw(st.booleans()))
    return encode(message)


@st.composite
def committed_payload(draw: st.DrawFn, room: UUID) -> tuple[UUID, bytes]:
    """What a forged publisher could put on the committed-events subject (and its room)."""
    nid = draw(st.sampled_from([room, uuid.uuid4()]))
    kind = draw(st.sampled_from(["json", "deep", "event", "seq"]))
    if kind == "json":
        return nid, draw(random_json(EVENT_TAGS))
    if kind == "deep":
        frame = b'{"negotiation_id":"%s","seq":1,"event":%%s}' % str(nid).encode()
        return nid, draw(deep(frame))
    event = draw(
        st.one_of(
            st.builds(RoundOpened, round=ints),
            st.builds(
                SellerReplied,
                round=ints,
                message_id=st.uuids(),
                seller=texts,
                text=texts,
                offer=st.none() | st.builds(Offer, unit_price=decimals, quantity=ints),
            ),
        )
    )
    seq = draw(st.integers(1, 5) | ints) if kind == "seq" else draw(st.integers(1, 5))
    data = encode_committed(CommittedEvent(negotiation_id=nid, seq=seq, event=event))
    return nid, data


@st.composite
def batches(draw: st.DrawFn, room: UUID) -> list[tuple[str, UUID | None, bytes]]:
    """1-4 payloads, each with its path: (path, room of a committed event, bytes)."""
    out: list[tuple[str, UUID | None, bytes]] = []
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(["broker", "agent", "monitor"]))
        if path == "broker":
            out.append((path, None, draw(attacker_payload(room))))
        elif path == "agent":
            out.append((path, None, draw(inbox_payload(room))))
        else:
            nid, data = draw(committed_payload(room))
            out.append((path, nid, data))
    return out


# -- the market --------------------------------------------------------------------------------
class Market:
    """The live actors, what each died of (if it did), and the rooms as committed."""

    def __init__(self, subjects: Subjects, nats_url: str) -> None:
        self.subjects, self.nats_url = subjects, nats_url
        self.buses: list[Bus] = []
        self.deaths: dict[str, BaseException | None] = {}
        self.died = anyio.Event()
        self.states: dict[UUID, NegotiationState] = {}
        self.changed = anyio.Event()
        self.welcomed: dict[str, anyio.Event] = {}

    async def bus(self, name: str) -> Bus:
        bus = await NatsBus.connect(self.nats_url, name=name)
        self.buses.append(bus)
        return bus

    async def supervise(
        self, name: str, run: Callable[..., Awaitable[None]], *, task_status: TaskStatus[None]
    ) -> None:
        """Run an actor; if it ever returns or raises, note it (the test then fails)."""
        try:
            await run(task_status=task_status)
            self.deaths[name] = None
        except Exception as exc:
            self.deaths[name] = exc
        finally:
            self.died.set()

    def assert_up(self) -> None:
        assert not self.died.is_set(), f"died under fuzzing: {self.deaths}"

    async def until(self, event: anyio.Event) -> None:
        """Wait for `event`, failing at once if an actor dies meanwhile."""
        await self.unless_dead(event.wait)

    async def unless_dead(self, step: Callable[[], Awaitable[object]]) -> None:
        """Run `step`, failing at once (not at a timeout) if an actor dies meanwhile."""
        self.assert_up()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await step()
                tg.cancel_scope.cancel()

            async def watch() -> None:
                await self.died.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            tg.start_soon(watch)
        self.assert_up()

    async def follow(self, *, task_status: TaskStatus[None]) -> None:
        feed = await (await self.bus("observer")).subscribe(
            self.subjects.all_events(), max_pending=1_000_000
        )
        task_status.started()
        async for msg in feed:
            try:
                committed = decode_committed(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # the test's own forged events
            state = self.states.get(committed.negotiation_id)
            if state is None:
                continue  # not a room the test opened
            with suppress(Exception):  # a forged event for a real room: the broker's are
                self.states[committed.negotiation_id] = evolve(state, committed.event)
            self.changed.set()

    async def ended(self, nid: UUID) -> NegotiationState:
        with anyio.fail_after(WAIT):
            while self.states[nid].phase != "ended":
                self.changed = anyio.Event()
                await self.until(self.changed)
        return self.states[nid]

    def on_message(self, message: InboxMessage) -> None:
        if isinstance(message, Welcome) and message.agent_id in self.welcomed:
            self.welcomed[message.agent_id].set()


async def test_fuzzed_payloads_never_stop_the_broker_an_agent_or_the_monitor(
    nats_url: str,
    db: tuple[asyncpg.Pool, PostgresEventStore],
    subject_prefix: str,
) -> None:
    pool, store = db
    subjects = Subjects(prefix=subject_prefix)
    scenario = parse_scenario_text(MARKET, fmt="toml")
    session = uuid.uuid4()
    market = Market(subjects, nats_url)

    def room(item: str, seed: int, timeout: float = 30.0) -> NegotiationStarted:
        options = RunOptions(max_rounds=6, seed=seed, round_timeout=timeout)
        started = build_started(scenario, session, scenario.buyer_item(item), options)
        market.states[started.negotiation_id] = NegotiationState()
        return started

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(market.follow)
            broker = Broker(
                await market.bus("broker"),
                store,
                subjects,
                sessions=PgSessions(pool),
                configurers=(ATTACKER,),  # so its scenarios reach parse_scenario
            )
            await tg.start(market.supervise, "broker", broker.run)
            monitor = QualityMonitor(await market.bus("monitor"), store, subjects)
            await tg.start(market.supervise, "monitor", monitor.run)
            cast: dict[str, BuyerBrain | SellerBrain] = {"buyer": BaselineBuyer()}
            cast.update({s: BaselineSeller() for s in (*HONEST, BYSTANDER)})
            for agent_id, brain in cast.items():
                role: Literal["buyer", "seller"] = "buyer" if agent_id == "buyer" else "seller"
                actor = AgentActor(
                    await market.bus(agent_id),
                    subjects,
                    agent_id,
                    brain,
                    role,
                    on_message=market.on_message if agent_id == BYSTANDER else None,
                )
                await tg.start(market.supervise, agent_id, actor.run)
            with anyio.fail_after(WAIT):
                await broker.joined(set(cast))

            await PgSessions(pool).save(session, scenario)  # the rooms' session row
            # The attacker's room stays open through the barrage (a long deadline); the
            # first honest room runs alongside it.
            attacked = room("Screen protector", 1, timeout=600.0)
            before = room("iPhone 15 case", 2)
            await broker.open(attacked)
            await broker.open(before)

            raw = await market.bus("raw")
            replies = await raw.subscribe(subjects.inbox(AgentId(ATTACKER)))
            outbox = subjects.outbox(AgentId(ATTACKER))
            bystander_inbox = subjects.inbox(AgentId(BYSTANDER))

            async def barrier(paths: set[str]) -> None:
                """Every payload sent so far on these paths has been handled."""
                with anyio.fail_after(BARRIER):
                    if "broker" in paths:
                        asked = OpenRooms(request_id=uuid.uuid4(), session_id=uuid.uuid4())
                        await raw.publish(outbox, encode(asked))
                        await raw.flush()

                        async def rejected() -> None:
                            async for msg in replies:
                                with suppress(msgspec.DecodeError, msgspec.ValidationError):
                                    m = decode_inbox(msg.data)
                                    if isinstance(m, Rejected) and m.request_id == asked.request_id:
                                        return

                        await market.unless_dead(rejected)
                    if "agent" in paths:
                        sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
                        market.welcomed[sentinel] = anyio.Event()
                        await raw.publish(bystander_inbox, encode(Welcome(agent_id=sentinel)))
                        await raw.flush()
                        await market.until(market.welcomed[sentinel])
                        del market.welcomed[sentinel]
                    if "monitor" in paths:
                        nid = uuid.uuid4()
                        end = NegotiationEnded(
                            status="completed", outcome=Outcome(type="no_deal", rounds=1)
                        )
                        sent = CommittedEvent(negotiation_id=nid, seq=1, event=end)
                        await raw.publish(subjects.events(nid), encode_committed(sent))
                        await raw.flush()
                        await market.unless_dead(  # fail_after bounds it, not settle's wait
                            lambda: monitor.settle([nid], wait=BARRIER * 2)
                        )
                market.assert_up()

            async def deliver(batch: list[tuple[str, UUID | None, bytes]]) -> None:
                market.assert_up()
                for path, nid, data in batch:
                    if len(data) > SERVER_MAX_PAYLOAD:
                        continue  # the server refuses it; no MAMS code would see it
                    if path == "broker":
                        await raw.publish(outbox, data)
                    elif path == "agent":
                        await raw.publish(bystander_inbox, data)
                    else:
                        assert nid is not None
                        await raw.publish(subjects.events(nid), data)
                await raw.flush()
                await barrier({path for path, _, _ in batch})

            @settings(
                max_examples=200,
                deadline=timedelta(seconds=20),
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(batch=batches(attacked.negotiation_id))
            def fuzz(batch: list[tuple[str, UUID | None, bytes]]) -> None:
                anyio.from_thread.run(deliver, batch)

            await anyio.to_thread.run_sync(fuzz)

            # After the barrage: the first honest room ended as rooms do, and a new one
            # opens and completes.
            after = room("iPhone 15 case", 3)
            await broker.open(after)
            for nid in (before.negotiation_id, after.negotiation_id):
                state = await market.ended(nid)
                assert state.ended is not None
                assert state.ended.status == "completed"
            market.assert_up()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for bus in market.buses:
                with suppress(Exception):
                    await bus.close()
