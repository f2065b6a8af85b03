"""Opacity and log-then-deliver, checked on the wire.

A raw NATS subscription to everything under the run's prefix sees every byte the broker
publishes to each agent's inbox during a whole market run. Each inbox message is checked
against the log twice: at once (its event must already be committed when the spy gets
it), and after the run (it must carry nothing its recipient may not know).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest

from mams.actors.market import RunOptions, run_market
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.events import (
    BuyerSaid,
    DealClosed,
    Event,
    NegotiationEnded,
    NegotiationStarted,
    RoundOpened,
    SellerReplied,
)
from mams.domain.messages import (
    ROOM_MESSAGES,
    BuyerMessage,
    BuyerRoomOpened,
    Recap,
    RoomClosed,
    RoomMessage,
    SellerMessage,
    SellerRoomOpened,
    TurnStarted,
    decode_committed,
    decode_inbox,
)
from mams.storage.eventstore import PostgresEventStore
from tests.integration.helpers import (
    json_keys,
    json_leaves,
    logged,
    nats_connect,
    of_type,
    raw_json,
)
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

Store = tuple[asyncpg.Pool, PostgresEventStore]

# Keys that carry a seller's private facts (or anyone's private reasoning).
SELLER_PRIVATE_KEYS = {
    "cost_price",
    "least_price",
    "selling_price",
    "style",
    "customer_retention_weight",
    "profit_maximization_weight",
    "terms",
    "reasoning",
    "guardrails",
}
BUYER_PRIVATE_KEYS = {"min_price", "max_price", "reasoning", "guardrails"}


def committed_in(message: RoomMessage, agent: str, events: list[Event]) -> bool:
    """Whether the event that caused `message` to `agent` is among `events`."""
    match message:
        case BuyerRoomOpened() | SellerRoomOpened():
            return any(isinstance(e, NegotiationStarted) for e in events)
        case TurnStarted(round=n, final=final):
            return RoundOpened(round=n, final=final) in events
        case BuyerMessage(message_id=mid):
            return any(
                isinstance(e, BuyerSaid) and e.message_id == mid and agent in e.to for e in events
            )
        case SellerMessage(message_id=mid):
            return any(isinstance(e, SellerReplied) and e.message_id == mid for e in events)
        case RoomClosed(status=status):
            return any(isinstance(e, NegotiationEnded) and e.status == status for e in events)
        case Recap(message=line):  # a line it said or was told: committed like it
            return committed_in(line, agent, events) or any(
                isinstance(e, BuyerSaid) and e.message_id == line.message_id for e in events
            )


def prices(data: bytes) -> set[Decimal]:
    """Every string leaf of the message that reads as a decimal (prices travel as strings)."""
    out: set[Decimal] = set()
    for leaf in json_leaves(raw_json(data)):
        if isinstance(leaf, str):
            try:
                value = Decimal(leaf)
            except InvalidOperation:
                continue
            if value.is_finite():
                out.add(value)
    return out


def json_text(text: str) -> bytes:
    """How a text appears inside JSON bytes (escaped, without the quotes)."""
    return msgspec.json.encode(text)[1:-1]


async def test_inboxes_carry_only_committed_and_permitted_facts(
    nats_url: str, pg_store: Store, subjects: Subjects
) -> None:
    _, store = pg_store
    scenario = phone()
    buyer = scenario.buyer.agent_id
    inbox: list[tuple[str, bytes]] = []
    uncommitted: list[str] = []
    items = scenario.buyer.items

    spy_bus = await NatsBus.connect(nats_url, name="spy")
    try:
        wiretap = await spy_bus.subscribe(f"{subjects.prefix}.>", max_pending=1_000_000)

        async def spy() -> None:
            ended = 0
            async for msg in wiretap:
                _, kind, *rest = msg.subject.split(".")
                if kind == "agent" and rest[-1] == "inbox":
                    agent = rest[0]
                    inbox.append((agent, msg.data))
                    message = decode_inbox(msg.data)
                    if not isinstance(message, ROOM_MESSAGES):
                        continue  # control (welcome): about no room
                    # Query the log now: the event must be committed before delivery.
                    events = await logged(store, message.negotiation_id)
                    if not committed_in(message, agent, events):
                        uncommitted.append(f"{agent}: {message!r}")
                elif kind == "events":
                    event = decode_committed(msg.data).event
                    if isinstance(event, NegotiationEnded):
                        ended += 1  # the broker's last publish for a room
                        if ended == len(items):
                            return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(spy)
                rooms = await run_market(
                    scenario,
                    uuid.uuid4(),
                    items,
                    connect=nats_connect(nats_url),
                    store=store,
                    options=RunOptions(max_rounds=8, seed=11, round_timeout=10),
                    subjects=subjects,
                )
    finally:
        await spy_bus.close()

    assert uncommitted == []

    logs = {r.negotiation_id: await logged(store, r.negotiation_id) for r in rooms}
    started = {nid: of_type(ev, NegotiationStarted)[0] for nid, ev in logs.items()}
    rooms_of: dict[str, set[UUID]] = defaultdict(set)
    for nid, s in started.items():
        rooms_of[s.buyer.agent_id].add(nid)
        for terms in s.sellers:
            rooms_of[terms.agent_id].add(nid)
    replies: dict[str, set[str]] = defaultdict(set)  # seller -> texts it wrote
    for ev in logs.values():
        for r in of_type(ev, SellerReplied):
            replies[r.seller].add(r.text)
    private: dict[str, set[Decimal]] = defaultdict(set)  # seller -> its cost and floor prices
    for s in started.values():
        for terms in s.sellers:
            private[terms.agent_id] |= {terms.cost_price, terms.least_price}

    # What each agent may legitimately see as a price: its own terms, prices addressed or
    # offered to it, and a deal it is part of.
    may_see: dict[str, set[Decimal]] = defaultdict(set)
    for nid, ev in logs.items():
        s = started[nid]
        may_see[buyer] |= {s.buyer.min_price, s.buyer.max_price}
        for terms in s.sellers:
            may_see[terms.agent_id] |= {
                terms.cost_price,
                terms.least_price,
                terms.selling_price,
            }
        for e in ev:
            if isinstance(e, BuyerSaid) and e.counter_price is not None:
                for seller in e.to:
                    may_see[seller].add(e.counter_price)
            if isinstance(e, SellerReplied) and e.offer is not None:
                may_see[buyer].add(e.offer.unit_price)
            if isinstance(e, DealClosed):
                may_see[e.seller].add(e.unit_price)
    addressed_texts: dict[str, set[str]] = defaultdict(set)  # seller -> buyer texts to it
    all_buyer_texts: set[str] = set()
    for ev in logs.values():
        for said in of_type(ev, BuyerSaid):
            all_buyer_texts.add(said.text)
            for seller in said.to:
                addressed_texts[seller].add(said.text)

    kinds: dict[str, set[str]] = defaultdict(set)
    for agent, data in inbox:
        message = decode_inbox(data)
        if not isinstance(message, ROOM_MESSAGES):
            continue
        kinds[agent].add(type(message).__name__)
        keys = json_keys(raw_json(data))
        assert message.negotiation_id in rooms_of[agent], f"{agent} got another room's {message!r}"
        others = {p for seller, ps in private.items() if seller != agent for p in ps}
        leaked = (prices(data) & others) - may_see[agent]
        assert not leaked, f"{agent} received other sellers' private prices {leaked}: {data!r}"

        if agent == buyer:
            assert isinstance(
                message, BuyerRoomOpened | TurnStarted | SellerMessage | RoomClosed
            ), message
            assert not keys & SELLER_PRIVATE_KEYS, f"buyer got {keys & SELLER_PRIVATE_KEYS}"
            continue

        assert isinstance(message, SellerRoomOpened | BuyerMessage | RoomClosed), message
        assert not keys & BUYER_PRIVATE_KEYS, f"{agent} got {keys & BUYER_PRIVATE_KEYS}"
        nid = message.negotiation_id
        own = next(t for t in started[nid].sellers if t.agent_id == agent)
        if isinstance(message, SellerRoomOpened):
            t = message.terms
            assert (t.cost_price, t.least_price, t.selling_price, t.style) == (
                own.cost_price,
                own.least_price,
                own.selling_price,
                own.style,
            )
        else:
            assert not keys & {"cost_price", "least_price", "terms"}, keys
        if isinstance(message, RoomClosed) and message.outcome is not None:
            assert message.outcome.seller == agent, "a seller learnt of another's deal"
        for other, texts in replies.items():
            if other == agent:
                continue
            for text in texts - replies[agent]:
                assert json_text(text) not in data, f"{agent} got {other}'s reply {text!r}"
        for text in all_buyer_texts - addressed_texts[agent]:
            assert json_text(text) not in data, f"{agent} got text addressed elsewhere {text!r}"

    # The checks above ran on real traffic: every participant got its share.
    assert kinds[buyer] >= {"BuyerRoomOpened", "TurnStarted", "SellerMessage", "RoomClosed"}
    for seller in {t.agent_id for s in started.values() for t in s.sellers}:
        assert kinds[seller] >= {"SellerRoomOpened", "BuyerMessage", "RoomClosed"}, seller
    delivered = len(inbox)
    assert delivered > 2 * len(rooms)
