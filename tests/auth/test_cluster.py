"""One market over a three-node NATS cluster: the broker on node 1, the buyer on node 2,
the sellers on node 3, with the per-agent permissions on every node.

The nodes run the shipped cluster/node{1,2,3}.conf with their ports moved to free loopback
ports, and one users file beside them. The test waits (bounded polling of /routez) until
the full mesh of routes is up, and, after each subscription, until every other node
knows of it: interest crosses routes asynchronously, and core NATS drops a message
published where no interest is known yet.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RunOptions, run_rooms
from mams.bus.auth import Role
from mams.bus.base import DEFAULT_MAX_PENDING, Bus, Subscription
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.events import NegotiationEnded, SellerReplied, decode_event
from mams.storage.eventstore import InMemoryEventStore
from tests.auth.helpers import WAIT, next_message, probe, write_users
from tests.auth.nodes import NatsNode, eventually, nats_nodes
from tests.integration.helpers import started_for
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
NAMES = ["node1", "node2", "node3"]
# The shipped configs' ports: client 4222-4224, monitoring 8222-8224, routes 6222-6224.
BASE = {"client": 4222, "http": 8222, "cluster": 6222}
_ADDR = re.compile(r"127\.0\.0\.1:(\d+)")


def render(ports: dict[str, dict[str, int]]) -> dict[str, str]:
    """The shipped node configs with every loopback port mapped to the chosen one."""
    mapping = {BASE[kind] + i: ports[name][kind] for i, name in enumerate(NAMES) for kind in BASE}

    def moved(match: re.Match[str]) -> str:
        return f"127.0.0.1:{mapping[int(match.group(1))]}"

    return {name: _ADDR.sub(moved, (CLUSTER / f"{name}.conf").read_text()) for name in NAMES}


async def routed_to(node: NatsNode, others: set[str]) -> bool:
    """Whether ``node`` has a route to every server named in ``others``."""
    doc = await node.monitor("/routez")
    return others <= {r.get("remote_name") for r in doc.get("routes") or []}


async def knows_interest(node: NatsNode, subject: str) -> bool:
    """Whether ``node`` has learned, over some route, of a subscription to ``subject``."""
    doc = await node.monitor("/routez?subs=1")
    return any(subject in (r.get("subscriptions_list") or []) for r in doc.get("routes") or [])


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[list[NatsNode]]:
    """Three routed nodes, up and fully meshed."""
    async with nats_nodes(tmp_path, NAMES, render, ("client", "http", "cluster")) as nodes:
        names = {f"mams-{i}" for i in (1, 2, 3)}
        for i, node in enumerate(nodes, start=1):

            async def meshed(node: NatsNode = node, i: int = i) -> bool:
                return await routed_to(node, names - {f"mams-{i}"})

            assert await eventually(meshed, within=WAIT), node.log_tail()
        yield nodes


class ClusterBus:
    """A `Bus` on one node whose `subscribe` returns once every other node has learned of
    the subscription (so nothing published anywhere afterwards misses it)."""

    def __init__(self, inner: Bus, others: list[NatsNode]) -> None:
        self.inner = inner
        self.others = others

    async def publish(self, subject: str, data: bytes) -> None:
        await self.inner.publish(subject, data)

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        sub = await self.inner.subscribe(subject, max_pending=max_pending)
        for node in self.others:

            async def known(node: NatsNode = node) -> bool:
                return await knows_interest(node, subject)

            assert await eventually(known, within=WAIT), f"{node.name} never learned {subject}"
        return sub

    async def flush(self) -> None:
        await self.inner.flush()

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        self.inner.on_reconnect(hook)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_message_crosses_the_cluster_with_permissions(
    tmp_path: Path, subject_prefix: str
) -> None:
    subjects = Subjects(subject_prefix)
    cast: dict[str, Role] = {"broker": "broker", "quicktech": "seller"}
    creds = write_users(tmp_path / "users.conf", subjects, cast)
    async with (
        cluster(tmp_path) as (n1, _n2, n3),
        probe(creds["broker"].url(n1.url), "broker") as broker,
        probe(creds["quicktech"].url(n3.url), "quicktech") as seller,
    ):
        own = await seller.subscribe(subjects.inbox(AgentId("quicktech")))

        async def known() -> bool:
            return await knows_interest(n1, subjects.inbox(AgentId("quicktech")))

        assert await eventually(known, within=WAIT)
        await broker.publish(subjects.inbox(AgentId("quicktech")), b"over the routes")
        assert await next_message(own) == b"over the routes"
        # Permissions hold on node 3 as on node 1.
        await seller.subscribe(subjects.all_events())
        await seller.violation("subscription", subjects.all_events())


async def test_agents_on_different_nodes_negotiate_in_one_market(
    tmp_path: Path, subject_prefix: str
) -> None:
    scenario = phone()
    subjects = Subjects(subject_prefix)
    started = started_for(
        scenario, "USB-C cable", RunOptions(max_rounds=6, seed=5, round_timeout=10)
    )
    sellers = [s.agent_id for s in started.sellers]
    assert len(sellers) == 2
    cast: dict[str, Role] = {"broker": "broker", "observer": "observer", "buyer": "buyer"}
    cast.update({s: "seller" for s in sellers})
    creds = write_users(tmp_path / "users.conf", subjects, cast)
    brains: dict[str, BuyerBrain | SellerBrain] = {"buyer": BaselineBuyer()}
    brains.update({s: BaselineSeller() for s in sellers})
    store = InMemoryEventStore()
    async with cluster(tmp_path) as nodes:
        n1, n2, n3 = nodes
        # The broker and the observer on node 1, the buyer on node 2, the sellers on node 3.
        node_of = {"broker": n1, "observer": n1, "buyer": n2} | {s: n3 for s in sellers}
        placed: dict[str, str] = {}

        async def connect(name: str) -> Bus:
            node = node_of[name]
            placed[name] = node.name
            bus = await NatsBus.connect(creds[name].url(node.url), name=name)
            return ClusterBus(bus, [n for n in nodes if n is not node])

        rooms = await run_rooms([started], brains, connect=connect, store=store, subjects=subjects)
    assert placed == {"observer": "node1", "broker": "node1", "buyer": "node2"} | {
        s: "node3" for s in sellers
    }
    (room,) = rooms
    assert room.state.phase == "ended"
    assert room.state.outcome is not None
    events = [decode_event(e.data) for e in await store.read(room.negotiation_id)]
    assert isinstance(events[-1], NegotiationEnded)
    # Both sellers, on node 3, answered the buyer on node 2 through the broker on node 1.
    answered = {e.seller for e in events if isinstance(e, SellerReplied)}
    assert set(sellers) <= answered, answered
