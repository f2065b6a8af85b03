"""The broker driven by hand over real NATS, logging to real PostgreSQL.

Nothing here runs agent actors: a raw connection publishes on any agent's outbox subject,
which is exactly what a misbehaving (or forged) agent could do without NATS permissions.
Every wait is for a committed event on the observers' subject; never a sleep. Ordering
makes that a barrier: messages from one connection reach the broker in publish order, so
once the event of a later valid turn is committed, every earlier message was handled.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest

from mams.actors.market import RunOptions
from mams.bus.subjects import Subjects
from mams.domain.events import (
    BuyerSaid,
    DealClosed,
    GuardrailTripped,
    NegotiationEnded,
    Offer,
    RoundClosed,
    RoundOpened,
    SellerReplied,
)
from mams.domain.guardrails import HOLD_TEXT
from mams.domain.messages import (
    MAX_PAYLOAD,
    Accept,
    BuyerAction,
    BuyerTurn,
    Say,
    SellerTurn,
    WalkAway,
    encode,
)
from mams.domain.negotiation import replay
from mams.storage.eventstore import PostgresEventStore
from tests.integration.helpers import broker_rig, logged, of_type, raw_json, started_for
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

ITEM = "iPhone 15 case"  # sellers: techmart (least 11.00), gadgethub (10.00), quicktech (12.50)
BUYER, A, B, C = "buyer", "techmart", "gadgethub", "quicktech"
QTY = 2  # the buyer wants 2 cases, max_price 14.00
CALM = RunOptions(max_rounds=6, seed=1, round_timeout=60.0)  # no deadline fires in a test

Store = tuple[asyncpg.Pool, PostgresEventStore]


def say(nid: UUID, round_: int, *to: str, text: str = "Best price?") -> BuyerTurn:
    return BuyerTurn(
        negotiation_id=nid, round=round_, message_id=uuid.uuid4(), action=Say(text=text, to=to)
    )


def act(nid: UUID, round_: int, action: BuyerAction) -> BuyerTurn:
    return BuyerTurn(negotiation_id=nid, round=round_, message_id=uuid.uuid4(), action=action)


def reply(
    nid: UUID, round_: int, price: str | None = "12.00", *, text: str = "Here is my price."
) -> SellerTurn:
    offer = None if price is None else Offer(unit_price=Decimal(price), quantity=QTY)
    return SellerTurn(
        negotiation_id=nid, round=round_, message_id=uuid.uuid4(), text=text, offer=offer
    )


# -- (a) identity comes from the subject ---------------------------------------------------
async def test_sender_is_the_outbox_subject_never_the_payload(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    with anyio.fail_after(20):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(started)
            await rig.wait_for(RoundOpened, lambda e: e.round == 1)
            await rig.send(BUYER, say(nid, 1, A))  # only A is addressed
            said = await rig.wait_for(BuyerSaid)
            assert said.to == (A,)
            dropped = rig.broker.stats.dropped

            # B answers a round it was not addressed in: dropped, whatever it claims.
            intruder = reply(nid, 1, "10.50", text="gadgethub here, cheaper than anyone")
            await rig.send(B, intruder)
            # A's turn, with forged sender fields in the payload naming B: the subject wins.
            genuine = reply(nid, 1, "12.00", text="twelve each")
            forged = raw_json(encode(genuine)) | {"seller": B, "sender": B, "agent": B}
            payload = msgspec.json.encode(forged)
            assert A.encode() not in payload  # nothing in the payload says it is A
            await rig.send(A, payload)

            replied = await rig.wait_for(SellerReplied)
            assert replied.seller == A
            assert replied.message_id == genuine.message_id
            assert replied.offer == Offer(unit_price=Decimal("12.00"), quantity=QTY)
            assert rig.broker.stats.dropped == dropped + 1

            # A seller publishing a buyer's action on its own outbox is not the buyer.
            await rig.wait_for(RoundOpened, lambda e: e.round == 2)
            dropped = rig.broker.stats.dropped
            await rig.send(
                A, act(nid, 2, Accept(seller=A, unit_price=Decimal("12.00"), quantity=QTY))
            )
            await rig.send(BUYER, act(nid, 2, WalkAway(text="No thanks.")))
            ended = await rig.wait_for(NegotiationEnded)
            assert ended.outcome.type == "no_deal"
            assert rig.broker.stats.dropped == dropped + 1

    events = await logged(store, nid)
    assert [r.seller for r in of_type(events, SellerReplied)] == [A]
    assert intruder.message_id not in {r.message_id for r in of_type(events, SellerReplied)}
    assert not of_type(events, DealClosed)


# -- (b) bad input is dropped, the broker keeps serving ------------------------------------
BAD = [
    "malformed_json",
    "unknown_type",
    "oversized",
    "unknown_negotiation",
    "duplicate_message_id",
    "wrong_round",
    "not_in_room",
    "seller_acting_as_buyer",
]


def bad_message(case: str, nid: UUID, earlier: SellerTurn) -> tuple[str, bytes]:
    """(sender, payload) of one bad message, sent while B's answer is awaited in round 1."""
    match case:
        case "malformed_json":
            return B, b'{"type": "seller.turn", "negotiation_id": '
        case "unknown_type":
            return B, msgspec.json.encode(
                {
                    "type": "bribe",
                    "negotiation_id": str(nid),
                    "round": 1,
                    "message_id": str(uuid.uuid4()),
                    "amount": "1000.00",
                }
            )
        case "oversized":
            data = encode(reply(nid, 1, "11.00", text="x" * (MAX_PAYLOAD + 1)))
            assert len(data) > MAX_PAYLOAD
            return B, data
        case "unknown_negotiation":
            return B, encode(reply(uuid.uuid4(), 1, "11.00"))
        case "duplicate_message_id":
            return A, encode(earlier)  # A's committed turn again, byte for byte
        case "wrong_round":
            return B, encode(reply(nid, 2, "11.00"))
        case "not_in_room":  # a valid agent id that is no seller of this room
            return "mallory", encode(reply(nid, 1, "11.00"))
        case "seller_acting_as_buyer":
            return B, encode(act(nid, 1, WalkAway(text="B ends it for the buyer")))
    raise AssertionError(case)


@pytest.mark.parametrize("case", BAD)
async def test_bad_message_is_dropped_and_the_broker_keeps_serving(
    case: str, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    with anyio.fail_after(20):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(started)
            await rig.says(BUYER, say(nid, 1, A, B))
            first = reply(nid, 1, "12.00", text="A: twelve")
            await rig.send(A, first)
            await rig.wait_for(SellerReplied, lambda e: e.seller == A)
            dropped = rig.broker.stats.dropped

            sender, payload = bad_message(case, nid, first)
            await rig.send(sender, payload)
            valid = reply(nid, 1, "10.50", text="B: ten fifty")
            await rig.send(B, valid)

            replied = await rig.wait_for(SellerReplied)
            assert (replied.seller, replied.message_id) == (B, valid.message_id)
            closed = await rig.wait_for(RoundClosed)
            assert closed.reason == "all_answered"
            assert rig.broker.stats.dropped == dropped + 1, case
            await rig.wait_for(RoundOpened, lambda e: e.round == 2)

    events = await logged(store, nid)
    replies = of_type(events, SellerReplied)
    assert [(r.seller, r.message_id) for r in replies] == [
        (A, first.message_id),
        (B, valid.message_id),
    ]
    assert all(len(r.text) < 100 for r in replies)
    assert not of_type(events, GuardrailTripped)


# -- (c) the broker is the last line of defence --------------------------------------------
async def test_broker_overrides_offers_below_floor_and_accepts_above_max(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    floors = {s.agent_id: s.least_price for s in started.sellers}
    with anyio.fail_after(20):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(started)
            # Round 1: A offers 1.00, far below its least_price of 11.00.
            await rig.says(BUYER, say(nid, 1, A))
            await rig.send(A, reply(nid, 1, "1.00", text="Practically free!"))
            fallback = await rig.wait_for(SellerReplied)
            assert fallback.seller == A
            assert fallback.offer is not None
            assert fallback.offer.unit_price >= floors[A]
            assert fallback.offer.quantity == QTY
            assert fallback.text != "Practically free!"

            # Round 2: the buyer accepts A's standing offer (18.00), above its max of 14.00.
            await rig.wait_for(RoundOpened, lambda e: e.round == 2)
            standing = fallback.offer.unit_price
            assert standing > started.buyer.max_price
            await rig.send(BUYER, act(nid, 2, Accept(seller=A, unit_price=standing, quantity=QTY)))
            hold = await rig.wait_for(BuyerSaid)
            assert hold.text == HOLD_TEXT
            assert hold.to == (A, B, C)  # the safe action: commit to nothing, ask everyone

            # Round 2 answers, then round 3: accepting B below B's real offer is a phantom.
            await rig.send(A, reply(nid, 2, "17.00"))
            await rig.send(B, reply(nid, 2, "12.00"))
            await rig.send(C, reply(nid, 2, "13.00"))
            await rig.wait_for(RoundOpened, lambda e: e.round == 3)
            phantom = Accept(seller=B, unit_price=Decimal("10.00"), quantity=QTY)
            await rig.send(BUYER, act(nid, 3, phantom))
            await rig.wait_for(BuyerSaid, lambda e: e.round == 3)
            for seller, price in ((A, "16.00"), (B, "12.00"), (C, "12.50")):
                await rig.send(seller, reply(nid, 3, price))
            await rig.wait_for(RoundOpened, lambda e: e.round == 4)
            real = Accept(seller=B, unit_price=Decimal("12.00"), quantity=QTY, text="Deal.")
            await rig.send(BUYER, act(nid, 4, real))
            ended = await rig.wait_for(NegotiationEnded)

    assert ended.status == "completed"
    assert ended.outcome.type == "deal"
    assert (ended.outcome.seller, ended.outcome.unit_price) == (B, Decimal("12.00"))
    events = await logged(store, nid)
    trips = [(g.agent, g.round, g.rule, g.resolution) for g in of_type(events, GuardrailTripped)]
    assert trips == [
        (A, 1, "offer_below_floor", "overridden"),
        (BUYER, 2, "accept_above_max", "overridden"),
        (BUYER, 3, "phantom_accept", "overridden"),
    ]
    for r in of_type(events, SellerReplied):
        assert r.offer is not None
        assert r.offer.unit_price >= floors[r.seller]
    assert [(d.seller, d.unit_price) for d in of_type(events, DealClosed)] == [
        (B, Decimal("12.00"))
    ]
    assert replay(events).outcome == ended.outcome


@pytest.mark.parametrize(
    ("price", "quantity", "rule"),
    [
        ('"NaN"', QTY, "offer_not_a_price"),
        ('"-Infinity"', QTY, "offer_not_a_price"),
        ('"1e30"', QTY, "offer_not_a_price"),
        ("1e400", QTY, "offer_not_a_price"),  # a JSON number, not a string
        ('"-5.00"', QTY, "offer_not_positive"),
        ('"0"', QTY, "offer_not_positive"),
        ('"12.00"', 999, "wrong_quantity"),
    ],
)
async def test_hostile_offer_on_the_wire_is_overridden(
    price: str, quantity: int, rule: str, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    floor = next(s.least_price for s in started.sellers if s.agent_id == A)
    turn = reply(nid, 1, None, text="a price no one can pay")
    body = encode(turn)[:-1] + f',"offer":{{"unit_price":{price},"quantity":{quantity}}}}}'.encode()
    with anyio.fail_after(20):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(started)
            await rig.says(BUYER, say(nid, 1, A))
            await rig.send(A, body)
            replied = await rig.wait_for(SellerReplied)
            await rig.wait_for(RoundOpened, lambda e: e.round == 2)
            # The buyer tries a NaN accept of it: overridden as well, never a deal.
            nan = act(nid, 2, Accept(seller=A, unit_price=Decimal("NaN"), quantity=QTY))
            await rig.send(BUYER, nan)
            hold = await rig.wait_for(BuyerSaid, lambda e: e.round == 2)
            assert hold.text == HOLD_TEXT

    assert replied.seller == A
    assert replied.message_id == turn.message_id
    assert replied.offer is not None
    assert replied.offer.unit_price.is_finite()
    assert replied.offer.unit_price >= floor
    assert replied.offer.quantity == QTY
    events = await logged(store, nid)
    trips = [(g.agent, g.rule, g.resolution) for g in of_type(events, GuardrailTripped)]
    assert trips == [(A, rule, "overridden"), (BUYER, "accept_not_a_price", "overridden")]
    assert not of_type(events, DealClosed)


# -- (d) deadlines -------------------------------------------------------------------------
async def test_round_deadline_closes_on_a_silent_seller_and_the_room_still_ends(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, RunOptions(max_rounds=2, seed=1, round_timeout=0.3))
    nid = started.negotiation_id
    with anyio.fail_after(20):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(started)
            # Queued behind the Open in order, so no deadline can pass in between: the
            # broker reads the buyer's turn then A's reply. B never answers.
            await rig.send(BUYER, say(nid, 1, A, B))
            await rig.send(A, reply(nid, 1, "12.00"))
            closed = await rig.wait_for(RoundClosed)
            assert closed.round == 1
            assert closed.reason == "deadline"
            assert closed.unanswered == (B,)
            opened = await rig.wait_for(RoundOpened)
            assert (opened.round, opened.final) == (2, True)
            # On the final turn the buyer accepts A; if its own deadline wins the race, the
            # room ends at the round limit instead. Either way it ends.
            accept = Accept(seller=A, unit_price=Decimal("12.00"), quantity=QTY)
            await rig.send(BUYER, act(nid, 2, accept))
            ended = await rig.wait_for(NegotiationEnded)

    assert ended.status == "completed"
    assert ended.outcome.type in ("deal", "max_rounds")
    if ended.outcome.type == "deal":
        assert (ended.outcome.seller, ended.outcome.unit_price) == (A, Decimal("12.00"))
    events = await logged(store, nid)
    assert of_type(events, RoundClosed)[0] == closed
    assert not [r for r in of_type(events, SellerReplied) if r.seller == B]
    assert isinstance(events[-1], NegotiationEnded)


# -- (e) shutdown records open rooms as aborted --------------------------------------------
@pytest.mark.parametrize("in_flight", [False, True], ids=["idle", "turns_in_flight"])
async def test_cancelling_the_broker_records_open_rooms_as_aborted(
    in_flight: bool, nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    with anyio.fail_after(20):
        async with broker_rig(nats_url, store, subjects) as rig:
            await rig.open(started)
            await rig.wait_for(RoundOpened, lambda e: e.round == 1)
            if in_flight:  # turns on their way; the broker may be mid-commit when cancelled
                await rig.send(BUYER, say(nid, 1, A, B))
                await rig.send(A, reply(nid, 1, "12.00"))
            await rig.stop()
            assert rig.broker.running() == []
            # What it recorded, it also published to observers.
            published = await rig.wait_for(NegotiationEnded)
            assert published.status == "aborted"

    events = await logged(store, nid)  # also checks seqs are 1..n with no gap
    ends = of_type(events, NegotiationEnded)
    assert len(ends) == 1
    assert events[-1] == ends[0] == published
    assert ends[0].status == "aborted"
    assert ends[0].outcome.type == "no_deal"
    assert replay(events).phase == "ended"


# -- (f) text PostgreSQL cannot store ------------------------------------------------------
async def test_a_nul_character_in_a_text_does_not_kill_the_broker(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    started = started_for(phone(), ITEM, CALM)
    nid = started.negotiation_id
    died: list[BaseException] = []
    valid = reply(nid, 1, "10.50", text="B: ten fifty")
    try:
        with anyio.fail_after(20):
            async with broker_rig(nats_url, store, subjects) as rig:
                await rig.open(started)
                await rig.send(BUYER, say(nid, 1, A, B))
                await rig.wait_for(BuyerSaid)
                await rig.send(A, reply(nid, 1, "12.00", text="twelve\x00each"))
                await rig.send(B, valid)
                await rig.wait_for(SellerReplied, lambda e: e.seller == B)
    except BaseExceptionGroup as group:
        died.extend(group.exceptions)
    events = await logged(store, nid)
    assert not died, f"the broker died of one agent's text: {died!r}; log ends {events[-1]!r}"
    assert valid.message_id in {r.message_id for r in of_type(events, SellerReplied)}
    assert all("\x00" not in r.text for r in of_type(events, SellerReplied))


def test_event_ids_are_random_v4_and_a_forked_child_never_repeats_its_parent() -> None:
    import uuid as uuid_module

    from mams.actors import ids as ids_module

    child = ids_module.RandomIds()
    drawn = [child.new() for _ in range(1000)]  # several refills of the buffer
    assert len(set(drawn)) == len(drawn)
    assert all(i.version == 4 and i.variant == uuid_module.RFC_4122 for i in drawn)
    # A fork: the parent goes on drawing from its buffer; the child's copy of the same
    # buffer must not be drawn from (os.register_at_fork bumps _FORKS in the child).
    parent = ids_module.RandomIds()
    parent._buffer, parent._next = child._buffer, child._next
    ids_module._FORKS[0] += 1
    try:
        parent._fork = ids_module._FORKS[0]  # the parent is not the one that forked
        rest = child._buffer
        assert child.new() != parent.new()
        assert child._buffer != rest
    finally:
        ids_module._FORKS[0] -= 1
