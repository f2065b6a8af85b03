"""The broker crashes mid-negotiation; a new broker resumes from the log.

(a) `mams broker` killed with SIGKILL after the first seller.replied is committed, then
    started again on the same database: it resumes the open room, the agents (which say
    hello again every few seconds) are caught up, the negotiation ends, the buyer exits 0;
    every event committed before the kill is still there, seqs are 1..n, ids unique.
(b) in process: a Broker cancelled with no shutdown work at all (a crash), then a new
    Broker on the same store resumes; the same agent actors finish the room with it.
Every wait is a bounded poll of a condition or an awaited event; every child is stopped.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest

from mams.actors.brains.base import BuyerDecision
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.bus.subjects import AgentId, Subjects
from mams.domain.events import NegotiationEnded, RoundOpened, SellerReplied
from mams.domain.messages import Hello, Welcome, decode_committed, decode_inbox, encode
from mams.domain.negotiation import replay
from mams.domain.views import BuyerView
from mams.storage.eventstore import PostgresEventStore
from tests.faults.rig import Rig, phone_room
from tests.integration.helpers import logged
from tests.processes.helpers import Cast, one_json_object
from tests.processes.test_processes import SCENARIO

POLL_TIMEOUT = 60.0


async def poll(pred: Callable[[], Any], within: float = POLL_TIMEOUT) -> None:
    """Until `pred()` (sync or async) is true; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = pred()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"condition not met within {within} s"
        await anyio.sleep(0.05)


async def all_events(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch("SELECT stream_id, seq, event_id, type FROM events ORDER BY global_pos")
    )


# -- (a) -------------------------------------------------------------------------------------
@pytest.mark.e2e
async def test_broker_killed_mid_negotiation_resumes_after_restart(
    procs: Cast, market: str, tmp_path: Path, database_url: str, pg_schema: str
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")
    sellers = {}
    for handle in ("@TechMart", "@QuickTech"):
        sellers[handle] = procs.seller(scenario, handle, market)
        await sellers[handle].wait_for("ready")
    # @QuickTech frozen: round 1 waits for it until its deadline, so the room is open when
    # the broker dies (after @TechMart's reply is committed).
    sellers["@QuickTech"].signal(signal.SIGSTOP)
    buyer = procs.buyer(
        scenario,
        market,
        "--seed",
        "7",
        "--round-timeout",
        "2",
        "--max-rounds",
        "8",
        "--json",
        "--model",
        "baseline",
    )
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:

        async def replied() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'seller.replied'")
            return bool(n)

        await poll(replied)
        broker.signal(signal.SIGKILL)
        assert await broker.wait(within=10) == -signal.SIGKILL
        before = await all_events(conn)
        assert "negotiation.ended" not in {r["type"] for r in before}, "ended before the kill"

        again = procs.mams("broker again", "broker", "--market", market)
        await again.wait_for("broker ready")
        assert "resumed 1 open negotiation(s)" in " ".join(again.out().split())
        sellers["@QuickTech"].signal(signal.SIGCONT)
        assert await buyer.wait() == 0, buyer.describe()
        after = await all_events(conn)
    finally:
        await conn.close()

    [result] = one_json_object(buyer.out())["negotiations"]
    assert result["status"] == "completed"
    nid = UUID(result["negotiation_id"])
    # Nothing lost: what was committed before the kill is a prefix of each stream now.
    keys = [(r["stream_id"], r["seq"], r["event_id"]) for r in after]
    assert set(keys) >= {(r["stream_id"], r["seq"], r["event_id"]) for r in before}
    # Nothing doubled: unique event ids, seqs 1..n in every stream.
    assert len({k[2] for k in keys}) == len(keys)
    streams: dict[UUID, list[int]] = {}
    for stream_id, seq, _ in keys:
        streams.setdefault(stream_id, []).append(seq)
    assert set(streams) == {nid}
    for seqs in streams.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert after[-1]["type"] == "negotiation.ended"
    assert len(after) > len(before)  # the resumed broker carried on


# -- (b) -------------------------------------------------------------------------------------
class GatedBuyer(BaselineBuyer):
    """The baseline buyer, but its round-2 decision waits for `release`."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.waiting = anyio.Event()

    async def decide(self, view: BuyerView) -> BuyerDecision:
        if view.round == 2:
            self.waiting.set()
            await self.release.wait()
        return await super().decide(view)


@pytest.mark.integration
async def test_a_new_broker_resumes_a_crashed_brokers_room(
    nats_url: str,
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
    subjects: Subjects,
) -> None:
    _, store = pg_store
    started, sellers = phone_room(seed=1)
    nid = started.negotiation_id
    buyer_brain = GatedBuyer()
    rig = Rig(nats_url, store, subjects)
    welcomes: list[Welcome] = []
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                observer = await rig.bus("observer")
                feed = await observer.subscribe(subjects.all_events(), max_pending=100_000)
                tap = await observer.subscribe(subjects.inbox(AgentId("buyer")))

                async def read_tap() -> None:
                    async for msg in tap:
                        m = decode_inbox(msg.data)
                        if isinstance(m, Welcome):
                            welcomes.append(m)

                tg.start_soon(read_tap)
                first, crash = await rig.broker(tg, "broker-1")
                brains = {a: BaselineSeller() for a in sellers}
                await rig.open_room(tg, first, started, buyer_brain, brains)
                async for msg in feed:  # until round 2 is committed and the buyer is on it
                    c = decode_committed(msg.data)
                    if isinstance(c.event, RoundOpened) and c.event.round == 2:
                        break
                await buyer_brain.waiting.wait()
                crash.cancel()
                before = await logged(store, nid)
                assert not isinstance(before[-1], NegotiationEnded)
                assert any(isinstance(e, SellerReplied) for e in before)

                second, _ = await rig.broker(tg, "broker-2", crashes=False, resume=True)
                assert list(second.rooms) == [nid]
                assert second.rooms[nid].state == replay(before)
                assert second.rooms[nid].seq == len(before)
                # The buyer says hello again: welcomed with its room and caught up (the
                # repeated turn-started is deduped by the actor).
                raw = await rig.bus("raw")
                hello = Hello(role="buyer", brain=buyer_brain.label)
                await raw.publish(subjects.outbox(AgentId("buyer")), encode(hello))
                await raw.flush()
                await poll(lambda: welcomes)
                buyer_brain.release.set()
                async for msg in feed:
                    c = decode_committed(msg.data)
                    if isinstance(c.event, NegotiationEnded):
                        break
                tg.cancel_scope.cancel()
    finally:
        await rig.close()

    assert welcomes[-1].rooms == (nid,)
    events = await logged(store, nid)  # seqs 1..n
    assert events[: len(before)] == before
    ended = events[-1]
    assert isinstance(ended, NegotiationEnded)
    assert ended.status == "completed"
    assert ended.outcome.rounds >= 2
    # The same agents finished it: replies from the sellers after the restart.
    later = [e for e in events[len(before) :] if isinstance(e, SellerReplied)]
    assert {e.seller for e in later} <= set(sellers)
    assert replay(events).phase == "ended"
    stored = await store.read(nid)
    assert len({e.event_id for e in stored}) == len(stored)
