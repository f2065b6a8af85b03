"""A seller written without MAMS (examples/external_seller.py: nats-py, json, decimal)
negotiates against `mams broker`, `mams seller` and `mams buyer` processes."""

from __future__ import annotations

import ast
import signal
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from uuid import UUID

import pytest

from mams.domain.events import GuardrailTripped, NegotiationEnded, SellerReplied, decode_event
from mams.storage.pg import open_store
from tests.processes.helpers import EXTERNAL_SELLER, Cast, one_json_object

pytestmark = pytest.mark.e2e

SCENARIO = """
name = "an outsider in the market"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.00
selling_price = 9.50
least_price = 5.50

[[sellers]]
handle = "@Outsider"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""
ASK, FLOOR = Decimal("8.00"), Decimal("6.00")
ALLOWED_IMPORTS = {
    "__future__",
    "argparse",
    "asyncio",
    "json",
    "re",
    "signal",
    "sys",
    "time",
    "uuid",
    "decimal",
    "nats",
}


def test_external_seller_imports_only_nats_json_decimal_and_stdlib() -> None:
    tree = ast.parse(EXTERNAL_SELLER.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            assert node.module is not None
            roots.add(node.module.split(".")[0])
    assert "mams" not in roots
    assert roots <= ALLOWED_IMPORTS, roots - ALLOWED_IMPORTS
    assert {"nats", "json", "decimal"} <= roots


def expected_offers(n: int) -> list[Decimal]:
    """The asking price, then 10% of the remaining gap toward the floor, cents rounded up."""
    prices = [ASK]
    while len(prices) < n:
        prev = prices[-1]
        price = (prev - (prev - FLOOR) * Decimal("0.10")).quantize(
            Decimal("0.01"), rounding=ROUND_CEILING
        )
        prices.append(max(FLOOR, price if price < prev else FLOOR))
    return prices


async def test_external_seller_negotiates_with_mams_processes(
    procs: Cast, market: str, nats_url: str, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    scenario = tmp_path / "outsider.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")
    outsider = procs.external_seller(
        "outsider", "--nats", nats_url, "--market", market, "--handle", "@Outsider"
    )
    await outsider.wait_for("ready")
    techmart = procs.seller(scenario, "@TechMart", market, name="techmart")
    await techmart.wait_for("ready")
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
    result = one_json_object(buyer.out())
    [negotiation] = result["negotiations"]
    assert negotiation["status"] == "completed"

    pool, store = await open_store(database_url, pg_schema)
    try:
        events = [
            decode_event(e.data) for e in await store.read(UUID(negotiation["negotiation_id"]))
        ]
    finally:
        await pool.close()
    assert isinstance(events[-1], NegotiationEnded)
    assert events[-1].status == "completed"
    replies = [e for e in events if isinstance(e, SellerReplied) and e.seller == "outsider"]
    assert replies, "the external seller never replied"
    offers = [r.offer for r in replies]
    assert all(o is not None and o.quantity == 3 for o in offers)
    prices = [o.unit_price for o in offers if o is not None]
    assert prices == expected_offers(len(prices))
    assert all(p >= FLOOR for p in prices)
    # The broker accepted every offer as made: no guardrail overrode the outsider.
    assert not [e for e in events if isinstance(e, GuardrailTripped) and e.agent == "outsider"]
    # Its own log says what it did: welcomed, the room, one offer line per reply, the close.
    log = outsider.out()
    assert "welcomed agent_id=outsider" in log
    offer_lines = [line for line in log.splitlines() if line.split()[1:2] == ["offer"]]
    assert len(offer_lines) == len(replies), log
    for price in prices:
        assert f"unit_price={price}" in log
    assert "room_closed" in log
    outsider.signal(signal.SIGTERM)
    assert await outsider.wait(within=15) == 0, outsider.describe()
    assert "stopping" in outsider.out()
