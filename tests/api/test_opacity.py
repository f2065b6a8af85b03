"""No response to a buyer or seller token carries another party's private terms
(docs/DESIGN.md invariant 1, over HTTP). Every seller's cost and floor, and the buyer's
range, are unique marker prices; a person plays a room to its end with a buyer token, and
every body that token receives (answers, errors, and each Server-Sent Event of the room)
is scanned for them. None may appear before the room has ended; the debrief after the end
reveals the sellers' terms, which is its point. A seller token's views are scanned for
the other sellers' terms and the buyer's range, before and after the end."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.api.conftest import serve
from tests.api.test_auth import bearer, token_file
from tests.api.test_flow import ok
from tests.processes.helpers import Cast

pytestmark = pytest.mark.e2e

ITEM = "USB-C cable"
# handle: (cost, floor, asking); costs and floors are the markers.
TERMS = {
    "@TechStore": ("2.17", "5.31", "9.89"),
    "@QuickTech": ("2.39", "5.47", "9.79"),
    "@CableKing": ("2.53", "5.83", "9.69"),
}
BUYER_RANGE = ("3.71", "9.43")  # the buyer's min and max: a seller must never see them


def sellers() -> list[dict[str, Any]]:
    return [
        {
            "handle": handle,
            "style": "neutral",
            "priorities": {"customer_retention": 0.5, "profit_maximization": 0.5},
            "inventory": [
                {
                    "item_name": ITEM,
                    "cost_price": float(cost),
                    "selling_price": float(asking),
                    "least_price": float(floor),
                }
            ],
            "model": "baseline",
        }
        for handle, (cost, floor, asking) in TERMS.items()
    ]


def found(text: str, markers: list[str]) -> list[str]:
    """The markers in `text` as numbers of their own (not inside 15.31 or 5.312)."""
    return [m for m in markers if re.search(rf"(?<![\d.]){re.escape(m)}0*(?![\d])", text)]


class Recorder:
    """A client with one token that keeps every body it receives, and when."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.bodies: list[tuple[str, str, bool]] = []  # (what, body, after the end)
        self.ended = False

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        got = await self.client.request(method, path, **kw)
        self.bodies.append((f"{method} {path} -> {got.status_code}", got.text, self.ended))
        return got

    async def events(self, nid: str) -> None:
        """Every SSE event of the room, until its stream ends (after the room's end)."""
        async with self.client.stream("GET", f"/api/negotiations/{nid}/events") as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    self.bodies.append((f"SSE {nid}", line, False))

    def before_end(self) -> list[tuple[str, str, bool]]:
        return [b for b in self.bodies if not b[2]]


@pytest.fixture
async def operator(procs: Cast, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    token, path = token_file(tmp_path)
    base = await serve(procs, "--token-file", str(path), "--rate-limit", "1000/second")
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=bearer(token)) as client:
        yield client


async def test_no_token_of_a_party_receives_another_partys_private_terms(
    operator: httpx.AsyncClient,
) -> None:
    sid = ok(await operator.post("/api/sessions", json={"description": "opacity"}), 201)
    sid = sid["session_id"]
    low, high = (float(p) for p in BUYER_RANGE)
    need = {"item_name": ITEM, "quantity": 3, "min_price": low, "max_price": high}
    ok(await operator.post(f"/api/sessions/{sid}/buyer-config", json={"items": [need]}))
    for seller in sellers():
        ok(await operator.post(f"/api/sessions/{sid}/sellers", json=seller), 201)
    tokens = {
        who: ok(await operator.post(f"/api/sessions/{sid}/tokens", json=body), 201)["token"]
        for who, body in (
            ("buyer", {"role": "buyer"}),
            *((h, {"role": "seller", "handle": h}) for h in TERMS),
        )
    }
    base = str(operator.base_url)
    async with AsyncExitStack() as stack:
        clients = {
            who: await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, timeout=60, headers=bearer(token))
            )
            for who, token in tokens.items()
        }
        buyer = Recorder(clients["buyer"])
        seller = {h: Recorder(clients[h]) for h in TERMS}

        async def seller_looks(nid: str | None) -> None:
            for one in seller.values():
                await one.call("GET", f"/api/sessions/{sid}")
                await one.call("GET", "/api/negotiations", params={"session_id": sid})
                if nid is not None:
                    for what in ("", "/replay", "/analytics"):
                        await one.call("GET", f"/api/negotiations/{nid}{what}")

        await buyer.call("GET", f"/api/sessions/{sid}")
        await seller_looks(None)
        start = {"session_id": sid, "item_name": ITEM, "buyer": "human", "seed": 7}
        started = await buyer.call("POST", "/api/negotiations/start", json=start)
        nid = ok(started, 201)["negotiation_id"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(buyer.events, nid)
            for what in ("", "/replay", "/analytics"):  # analytics: 409 until the end
                await buyer.call("GET", f"/api/negotiations/{nid}{what}")
            offers: dict[str, Decimal] = {}
            for message in (
                {"text": "I need 3 cables. Your best price?"},
                {"text": "Too high. Would you take 4.10?", "counter_price": 4.10},
                {"text": "Still high. 4.25?", "recipients": ["@QuickTech"], "counter_price": 4.25},
            ):
                said = ok(
                    await buyer.call("POST", f"/api/negotiations/{nid}/message", json=message)
                )
                for reply in said["seller_responses"]:
                    if reply["offer"]:
                        offers[reply["handle"]] = Decimal(str(reply["offer"]["unit_price"]))
                await buyer.call("GET", f"/api/negotiations/{nid}")
                await buyer.call("GET", f"/api/negotiations/{nid}/replay")
            await seller_looks(nid)
            # A refused accept (a price nobody offered): its 409 carries nothing either.
            handle, price = min(offers.items(), key=lambda o: o[1])
            wrong = {"decision": "accept", "seller_id": handle, "price": 4.01, "quantity": 3}
            refused = await buyer.call("POST", f"/api/negotiations/{nid}/decide", json=wrong)
            assert refused.status_code == 409
            buyer.ended = True  # what follows may hold the debrief
            accept = {"decision": "accept", "seller_id": handle, "price": str(price), "quantity": 3}
            answer = await buyer.call("POST", f"/api/negotiations/{nid}/decide", json=accept)
        decided = ok(answer)
        assert decided["outcome"]["type"] == "deal"
        analytics = await buyer.call("GET", f"/api/negotiations/{nid}/analytics")
        replayed = await buyer.call("GET", f"/api/negotiations/{nid}/replay")
        await seller_looks(nid)
        for one in seller.values():
            async with one.client.stream("GET", f"/api/negotiations/{nid}/events") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        one.bodies.append(("SSE after the end", line, True))
        # A seller learns only whether it got the deal (as the broker tells it).
        for handle, one in seller.items():
            room = ok(await one.client.get(f"/api/negotiations/{nid}"))
            listed = ok(await one.client.get("/api/negotiations"))["negotiations"]
            assert [r["negotiation_id"] for r in listed] == [nid]
            if handle == decided["deal_summary"]["seller"]:
                assert room["outcome"]["unit_price"] == price
                assert listed[0]["unit_price"] == price
            else:
                assert room["outcome"] is None
                assert listed[0]["unit_price"] is None
                assert listed[0]["seller"] is None

    costs_and_floors = [m for cost, floor, _ in TERMS.values() for m in (cost, floor)]
    sse = [b for b in buyer.bodies if b[0].startswith("SSE")]
    assert any("negotiation.ended" in body or "room.closed" in body for _, body, _ in sse), sse
    assert len(buyer.before_end()) > 15
    for what, body, _ in buyer.before_end():
        assert not found(body, costs_and_floors), (what, found(body, costs_and_floors), body)
    # The buyer's own view never holds them, even after the end.
    assert not found(replayed.text, costs_and_floors)
    # The debrief, after the end, reveals every seller's cost and floor: that is its point.
    assert sorted(found(answer.text, costs_and_floors)) == sorted(costs_and_floors)
    assert sorted(found(analytics.text, costs_and_floors)) == sorted(costs_and_floors)

    for handle, one in seller.items():
        others = [m for h, (c, f, _) in TERMS.items() if h != handle for m in (c, f)]
        assert len(one.bodies) > 10
        for what, body, _ in one.bodies:
            leaked = found(body, [*others, *BUYER_RANGE])
            assert not leaked, (handle, what, leaked, body)
