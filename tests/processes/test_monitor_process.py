"""`mams monitor` as its own process grades a market's negotiations live.

The market runs as processes (`mams broker`, `mams seller`, `mams buyer`); one seller is
an outsider played by this test over raw NATS (the PROTOCOL.md wire format), and it tells
the buyer its cost. The monitor process, an observer on the committed events, must record
that leak, exactly as `check()` finds it over the stored log.
"""

from __future__ import annotations

import json
import signal
import uuid
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import anyio
import nats
import pytest
from nats.aio.msg import Msg

from mams.actors.monitor import stored_flags
from mams.domain.events import decode_event
from mams.domain.quality import check
from mams.storage.pg import open_store
from tests.processes.helpers import Cast, one_json_object
from tests.processes.test_external_seller import SCENARIO

pytestmark = pytest.mark.e2e

COST = Decimal("3.00")  # @Outsider's cost of the cable in SCENARIO


async def _leaky_outsider(nats_url: str, market: str, stop: anyio.Event) -> None:
    """@Outsider: offers its asking price and says what it paid, every round."""
    nc = await nats.connect(nats_url, name="outsider")
    inbox, outbox = f"{market}.agent.outsider.inbox", f"{market}.broker.outsider.outbox"
    welcomed = anyio.Event()
    quantity: dict[str, int] = {}

    async def on_message(msg: Msg) -> None:
        body = json.loads(msg.data)
        if body["type"] == "welcome":
            welcomed.set()
        elif body["type"] == "room.opened.seller":
            quantity[body["negotiation_id"]] = body["quantity"]
        elif body["type"] == "buyer.message":
            nid = body["negotiation_id"]
            turn = {
                "type": "seller.turn",
                "negotiation_id": nid,
                "round": body["round"],
                "message_id": str(uuid.uuid4()),
                "text": f"I paid ${COST} for each, so $8.00 per unit is fair.",
                "offer": {"unit_price": "8.00", "quantity": quantity[nid]},
            }
            await nc.publish(outbox, json.dumps(turn).encode())

    await nc.subscribe(inbox, cb=on_message)
    hello = json.dumps({"type": "hello", "role": "seller", "brain": "leaky outsider"}).encode()
    try:
        while not welcomed.is_set():
            await nc.publish(outbox, hello)
            with anyio.move_on_after(0.5):
                await welcomed.wait()
        await stop.wait()
    finally:
        await nc.close()


async def test_monitor_process_records_a_leak_seen_on_the_bus(
    procs: Cast, market: str, nats_url: str, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    scenario = tmp_path / "outsider.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")
    monitor = procs.mams("monitor", "monitor", "--market", market)
    await monitor.wait_for("quality monitor ready")
    techmart = procs.seller(scenario, "@TechMart", market, name="techmart")
    await techmart.wait_for("ready")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_leaky_outsider, nats_url, market, stop)
        buyer = procs.buyer(
            scenario,
            market,
            "--seed",
            "7",
            "--round-timeout",
            "10",
            "--json",
        )
        assert await buyer.wait() == 0, buyer.describe()
        stop.set()
    [negotiation] = one_json_object(buyer.out())["negotiations"]
    nid = UUID(negotiation["negotiation_id"])

    pool, store = await open_store(database_url, pg_schema)
    try:
        events = [decode_event(e.data) for e in await store.read(nid)]
        expected = check(events)
        assert any(f.rule == "leakage.seller_cost" and f.agent == "outsider" for f in expected), (
            expected
        )
        with anyio.move_on_after(10):  # the monitor records as the events arrive
            while await stored_flags(store, nid) != expected:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert await stored_flags(store, nid) == expected, monitor.describe()
    finally:
        await pool.close()
    monitor.signal(signal.SIGTERM)
    assert await monitor.wait() == 0, monitor.describe()
    assert "graded 1 negotiation(s)" in monitor.out(), monitor.describe()
