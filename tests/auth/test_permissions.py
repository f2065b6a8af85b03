"""The server refuses what a role may not do (docs/DESIGN.md invariant 1, the NATS half).

Every test runs a real nats-server on a free loopback port whose users file comes from
`mams.bus.auth.UsersFile`. A refusal is proven twice: the server's permissions-violation
error reaches the offending client, and the message never reaches anyone (the would-be
receiver's first message is a sentinel sent after the refused one).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mams.bus.auth import Role
from mams.bus.subjects import AgentId, Subjects
from tests.auth.helpers import (
    WAIT,
    Market,
    next_message,
    nothing_delivered,
    permissioned_market,
    probe,
)

pytestmark = pytest.mark.integration

CAST: dict[str, Role] = {
    "broker": "broker",
    "observer": "observer",
    "buyer": "buyer",
    "techmart": "seller",
    "gadgethub": "seller",
}


@pytest.fixture
async def market(tmp_path: Path, subject_prefix: str) -> AsyncIterator[Market]:
    async with permissioned_market(tmp_path, Subjects(subject_prefix), CAST) as m:
        yield m


def inbox(m: Market, agent: str) -> str:
    return m.subjects.inbox(AgentId(agent))


def outbox(m: Market, agent: str) -> str:
    return m.subjects.outbox(AgentId(agent))


async def test_a_seller_cannot_subscribe_to_other_inboxes_the_events_or_everything(
    market: Market,
) -> None:
    m = market
    forbidden = [
        inbox(m, "gadgethub"),
        inbox(m, "buyer"),
        m.subjects.all_events(),
        m.subjects.events(uuid.uuid4()),
        ">",
        f"{m.subjects.prefix}.agent.*.inbox",
        m.subjects.all_outboxes(),
    ]
    async with (
        probe(m.url_for("techmart"), "techmart") as seller,
        probe(m.url_for("broker"), "broker") as broker,
    ):
        own = await seller.subscribe(inbox(m, "techmart"))
        subs = []
        for subject in forbidden:
            subs.append(await seller.subscribe(subject))
            await seller.violation("subscription", subject)
        # The broker now sends to each of those subjects, then to the seller's own inbox.
        for subject in (inbox(m, "gadgethub"), inbox(m, "buyer"), m.subjects.all_events()):
            await broker.publish(subject.replace(">", "x"), b"secret")
        await broker.publish(inbox(m, "techmart"), b"sentinel")
        assert await next_message(own) == b"sentinel"
        # Messages on one connection arrive in the order the broker sent them; the
        # sentinel came, so nothing sent before it is still on its way.
        assert all(nothing_delivered(sub) for sub in subs)
        assert seller.nc.is_connected  # refused, not disconnected


async def test_a_seller_cannot_publish_as_another_seller_or_to_any_inbox(market: Market) -> None:
    m = market
    forbidden = [
        outbox(m, "gadgethub"),
        outbox(m, "buyer"),
        inbox(m, "gadgethub"),
        inbox(m, "buyer"),
        inbox(m, "techmart"),
        m.subjects.events(uuid.uuid4()),
    ]
    async with (
        probe(m.url_for("techmart"), "techmart") as seller,
        probe(m.url_for("broker"), "broker") as broker,
        probe(m.url_for("gadgethub"), "gadgethub") as other,
        probe(m.url_for("buyer"), "buyer") as buyer,
        probe(m.url_for("observer"), "observer") as observer,
    ):
        outboxes = await broker.subscribe(m.subjects.all_outboxes())
        other_inbox = await other.subscribe(inbox(m, "gadgethub"))
        buyer_inbox = await buyer.subscribe(inbox(m, "buyer"))
        events = await observer.subscribe(m.subjects.all_events())
        for subject in forbidden:
            await seller.publish(subject, b'{"type":"seller.turn","forged":true}')
            await seller.violation("publish", subject)
        # The seller's own outbox works, and it is the broker's first message: the forged
        # one on gadgethub's outbox never arrived.
        await seller.publish(outbox(m, "techmart"), b"own")
        first = await outboxes.next_msg(timeout=WAIT)
        assert (first.subject, first.data) == (outbox(m, "techmart"), b"own")
        # And no inbox or the event stream got the forged messages.
        for sub, subject in (
            (other_inbox, inbox(m, "gadgethub")),
            (buyer_inbox, inbox(m, "buyer")),
            (events, m.subjects.events(uuid.uuid4())),
        ):
            await broker.publish(subject, b"sentinel")
            assert await next_message(sub) == b"sentinel"


async def test_the_broker_does_its_job_and_nothing_else(market: Market) -> None:
    m = market
    async with (
        probe(m.url_for("broker"), "broker") as broker,
        probe(m.url_for("techmart"), "techmart") as seller,
        probe(m.url_for("observer"), "observer") as observer,
    ):
        outboxes = await broker.subscribe(m.subjects.all_outboxes())
        seller_inbox = await seller.subscribe(inbox(m, "techmart"))
        events = await observer.subscribe(m.subjects.all_events())
        await seller.publish(outbox(m, "techmart"), b"turn")
        msg = await outboxes.next_msg(timeout=WAIT)
        assert (msg.subject, msg.data) == (outbox(m, "techmart"), b"turn")
        await broker.publish(inbox(m, "techmart"), b"view")
        assert await next_message(seller_inbox) == b"view"
        await broker.publish(m.subjects.events(uuid.uuid4()), b"event")
        assert await next_message(events) == b"event"
        # The broker reads outboxes, not inboxes; it cannot speak on an agent's outbox.
        await broker.subscribe(inbox(m, "techmart"))
        await broker.violation("subscription", inbox(m, "techmart"))
        await broker.publish(outbox(m, "gadgethub"), b"forged")
        await broker.violation("publish", outbox(m, "gadgethub"))


async def test_an_observer_can_only_read_events(market: Market) -> None:
    m = market
    async with (
        probe(m.url_for("observer"), "observer") as observer,
        probe(m.url_for("broker"), "broker") as broker,
    ):
        events = await observer.subscribe(m.subjects.all_events())
        for subject in (inbox(m, "techmart"), m.subjects.all_outboxes(), ">"):
            await observer.subscribe(subject)
            await observer.violation("subscription", subject)
        for subject in (
            m.subjects.events(uuid.uuid4()),
            outbox(m, "techmart"),
            inbox(m, "buyer"),
        ):
            await observer.publish(subject, b"forged")
            await observer.violation("publish", subject)
        await broker.publish(m.subjects.events(uuid.uuid4()), b"event")
        assert await next_message(events) == b"event"  # its own forged event never came


async def test_no_role_may_use_reply_inboxes(market: Market) -> None:
    # MAMS does not use request/reply: a grant of nats-py's _INBOX.> to every role would
    # let any agent read the replies meant for any other user.
    m = market
    for name in CAST:
        async with probe(m.url_for(name), name) as client:
            await client.subscribe("_INBOX.>")
            await client.violation("subscription", "_INBOX.>")
            await client.publish("_INBOX.someone.else", b"forged reply")
            await client.violation("publish", "_INBOX.someone.else")
