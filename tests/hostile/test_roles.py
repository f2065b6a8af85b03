"""A seller's credentials must not buy it another role: it may not configure a market
(an inline scenario in `open_rooms`), seat itself as the buyer, enlist real sellers on
terms it writes (the red team had a real seller sell at $0.03 against its $8.50 floor),
seat the real buyer as a seller, open 10,000 rooms at once, or open a stored session whose
buyer it is not. Each request is refused with a Rejected reply naming why, and the market
goes on as if it had never been sent."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mams.storage.eventstore import PostgresEventStore
from tests.hostile.rig import ATTACKER, HostileMarket, hostile_market, scenario_mapping

pytestmark = pytest.mark.integration

Db = tuple[asyncpg.Pool, PostgresEventStore]


def inline(scenario: dict[str, Any], **fields: Any) -> dict[str, Any]:
    request = {"type": "open_rooms", "request_id": str(uuid.uuid4()), "scenario": scenario}
    request.update(fields)
    return request


def as_buyer(scenario: dict[str, Any]) -> dict[str, Any]:
    """The market with @Mallory as its buyer (it keeps the buyer's items)."""
    forged = copy.deepcopy(scenario)
    forged["buyer"]["handle"] = "@Mallory"
    forged["sellers"] = [s for s in forged["sellers"] if s["handle"] != "@Mallory"]
    return forged


def dumping_floors(scenario: dict[str, Any]) -> dict[str, Any]:
    """Every real seller's floor and ask written down to a few cents."""
    forged = as_buyer(scenario)
    for seller in forged["sellers"]:
        for stock in seller["inventory"]:
            stock.update(cost_price="0.01", least_price="0.03", selling_price="0.04")
    return forged


def buyer_as_seller(scenario: dict[str, Any]) -> dict[str, Any]:
    """@Mallory buys; the real buyer is enlisted as a seller of the cable."""
    forged = as_buyer(scenario)
    forged["sellers"].append(
        {
            "handle": "@Buyer",
            "style": "sweet",
            "customer_retention_weight": "0.5",
            "profit_maximization_weight": "0.5",
            "inventory": [
                {
                    "item_name": "USB-C cable",
                    "cost_price": "0.01",
                    "selling_price": "0.04",
                    "least_price": "0.03",
                }
            ],
        }
    )
    return forged


async def refused(rig: HostileMarket, request: dict[str, Any]) -> None:
    """The attacker sends `request`: a Rejected reply comes back, the broker logs why, no
    room is opened by it, and no real agent hears of it."""

    before = set(rig.states)
    attack = await rig.attack(
        [
            {"op": "hello"},
            {"op": "publish", "data": json.dumps(request)},
            {
                "op": "expect",
                "types": ["rejected", "rooms.opened"],
                "request_id": request["request_id"],
            },
        ]
    )
    reply = attack.rejected(request["request_id"])
    assert reply["reason"]
    assert any(r["reason"] == reply["reason"] for r in rig.refusals()), rig.refusals()
    await rig.run_honest()
    opened = set(rig.states) - before
    started_by_attack = [
        nid for nid in opened if (st := rig.states[nid].started) and st.buyer.agent_id == ATTACKER
    ]
    assert started_by_attack == []
    await rig.check_survived()


async def test_a_seller_cannot_enlist_real_sellers_below_their_floors(
    tmp_path: Path, db: Db
) -> None:
    async with hostile_market(tmp_path, db) as rig:
        await refused(rig, inline(dumping_floors(scenario_mapping()), items=["USB-C cable"]))


async def test_a_seller_cannot_enlist_the_real_buyer_as_a_seller(tmp_path: Path, db: Db) -> None:
    async with hostile_market(tmp_path, db) as rig:
        await refused(rig, inline(buyer_as_seller(scenario_mapping()), items=["USB-C cable"]))


async def test_a_seller_cannot_open_ten_thousand_rooms(tmp_path: Path, db: Db) -> None:
    forged = as_buyer(scenario_mapping())
    forged["buyer"]["items"] = forged["buyer"]["items"][:1]
    forged["sellers"] = [s for s in scenario_mapping()["sellers"] if s["handle"] == "@GadgetHub"]
    async with hostile_market(tmp_path, db) as rig:
        await refused(rig, inline(forged, items=["iPhone 15 case"], runs=10_000, round_timeout=1.0))


async def test_a_seller_cannot_open_a_stored_session_of_another_buyer(
    tmp_path: Path, db: Db
) -> None:
    async with hostile_market(tmp_path, db) as rig:
        request = {
            "type": "open_rooms",
            "request_id": str(uuid.uuid4()),
            "session_id": str(rig.session_id),
        }
        await refused(rig, request)
