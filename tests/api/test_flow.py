"""The specification's flow over HTTP, call by call, as a person would make it with curl:
a session, the buyer's needs, three sellers, a room with the caller as the buyer, three
messages and an accept; then the debrief. Against `mams serve` as a real process, with
real NATS and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

SELLERS = [
    {
        "handle": "@TechStore",
        "style": "rude",
        "priorities": {"customer_retention": 0.2, "profit_maximization": 0.8},
        "inventory": [
            {
                "item_name": "USB-C cable",
                "cost_price": 2.0,
                "selling_price": 9.5,
                "least_price": 5.5,
            }
        ],
        "model": "baseline",
    },
    {
        "handle": "@QuickTech",
        "style": "sweet",
        "priorities": {"customer_retention": 0.7, "profit_maximization": 0.3},
        "inventory": [
            {
                "item_name": "USB-C cable",
                "cost_price": 3.0,
                "selling_price": 8.0,
                "least_price": 6.0,
            }
        ],
        "model": "baseline",
    },
    {
        "handle": "@CableKing",
        "style": "neutral",
        "priorities": {"customer_retention": 0.5, "profit_maximization": 0.5},
        "inventory": [
            {
                "item_name": "USB-C cable",
                "cost_price": 2.5,
                "selling_price": 10.0,
                "least_price": 5.0,
            }
        ],
        "model": "baseline",
    },
]
NEEDS = {"items": [{"item_name": "USB-C cable", "quantity": 3, "min_price": 4, "max_price": 9}]}


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json(parse_float=Decimal)
    assert isinstance(body, dict)
    return body


async def test_the_specification_flow_with_a_person_as_the_buyer(api: httpx.AsyncClient) -> None:
    created = ok(await api.post("/api/sessions", json={"description": "cables"}), 201)
    sid = created["session_id"]
    assert created["created_at"]
    ok(await api.post(f"/api/sessions/{sid}/buyer-config", json=NEEDS))
    for seller in SELLERS:
        added = ok(await api.post(f"/api/sessions/{sid}/sellers", json=seller), 201)
        assert added["handle"] == seller["handle"]
    # A zero is a value given, refused by name (never taken as "not given"), no room opened.
    for field in ("max_rounds", "round_timeout", "rooms_at_once"):
        body = {"session_id": sid, "item_name": "USB-C cable", field: 0}
        refused = await api.post("/api/negotiations/start", json=body)
        assert refused.status_code == 422, refused.text
        assert [p["path"] for p in refused.json()["problems"]] == [field]
    started = ok(
        await api.post(
            "/api/negotiations/start",
            json={"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": 3},
        ),
        201,
    )
    nid = started["negotiation_id"]
    assert started["status"] == "in_progress"
    assert sorted(started["available_sellers"]) == ["@CableKing", "@QuickTech", "@TechStore"]

    # Hostile turns are refused whole, nothing sent: too long, a seller not in the room.
    for body, path in (
        ({"text": "x" * 4001}, "text"),
        ({"text": "hi", "recipients": ["@Nobody"]}, "recipients[0]"),
    ):
        refused = await api.post(f"/api/negotiations/{nid}/message", json=body)
        assert refused.status_code == 422, refused.text
        assert [p["path"] for p in refused.json()["problems"]] == [path]

    # Three messages: to all, then to two by handle, then a counter to one.
    texts = [
        ({"text": "I need 3 USB-C cables. Best price?", "recipients": ["all"]}, 3),
        ({"text": "Can you do better?", "recipients": ["@TechStore", "@QuickTech"]}, 2),
        ({"text": "Would you take 6.10?", "recipients": ["@QuickTech"], "counter_price": 6.10}, 1),
    ]
    offers: dict[str, Decimal] = {}
    for n, (message, answering) in enumerate(texts, start=1):
        answer = await api.post(f"/api/negotiations/{nid}/message", json=message)
        said = ok(answer)
        # Nothing private: no floor, no cost, no reasoning of any party in the answer
        # (tests/api/test_opacity.py scans every body for the terms' values).
        for private in ("least_price", "cost_price", "reasoning", "selling_price"):
            assert private not in answer.text
        assert said["round"] == n
        assert said["message_id"]
        assert said["status"] == "in_progress"
        assert len(said["seller_responses"]) == answering
        for reply in said["seller_responses"]:
            assert reply["response"]
            assert set(reply) == {
                "seller_id",
                "handle",
                "response",
                "offer",
                "message_id",
                "audio_url",
                "quality",
            }
            if reply["offer"]:
                offers[reply["handle"]] = reply["offer"]["unit_price"]

    # A price nobody offered: refused with the reason, nothing sent.
    handle, price = min(offers.items(), key=lambda o: o[1])
    wrong = await api.post(
        f"/api/negotiations/{nid}/decide",
        json={"decision": "accept", "seller_id": handle, "price": float(price) - 1, "quantity": 3},
    )
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["problems"][0]["path"] == "phantom_accept"

    decided = ok(
        await api.post(
            f"/api/negotiations/{nid}/decide",
            json={"decision": "accept", "seller_id": handle, "price": str(price), "quantity": 3,
                  "text": "Deal."},
        )
    )  # fmt: skip
    assert decided["status"] == "completed"
    assert decided["outcome"]["type"] == "deal"
    summary = decided["deal_summary"]
    assert summary == {"seller": handle, "final_price": price, "quantity": 3, "reasoning": "Deal."}
    debrief = decided["analysis"]
    # The hidden facts, revealed now: every seller's floor and cost.
    floors = {s["handle"]: (s["least_price"], s["cost_price"]) for s in debrief["sellers"]}
    assert floors["@CableKing"] == (Decimal("5.00"), Decimal("2.50"))
    assert debrief["zone"]["ceiling"] == Decimal("9.00")
    assert debrief["deal"]["unit_price"] == price
    assert debrief["lesson"]

    # The room is over: another message is a 409 saying so; the analytics are there.
    late = await api.post(f"/api/negotiations/{nid}/message", json={"text": "hello?"})
    assert late.status_code == 409
    assert "has ended" in late.json()["error"]
    analytics = ok(await api.get(f"/api/negotiations/{nid}/analytics"))
    assert analytics["outcome"] == "deal"
    assert analytics["rounds"] == 4
    assert analytics["within_budget"] is True
    assert analytics["debrief"]["deal"]["unit_price"] == price

    # The session's report, and its plots as mams report draws them.
    report = ok(await api.get(f"/api/sessions/{sid}/report"))
    assert report["overall"]["deals"] == 1
    plots = ok(await api.get(f"/api/sessions/{sid}/report/plots"))["plots"]
    assert {p["name"] for p in plots} >= {"trajectories.png", "by_model.png", "by_style.png"}
    png = await api.get(plots[0]["url"])
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert (await api.get(f"/api/sessions/{sid}/report/plots/nope.png")).status_code == 404

    # The session is fixed once a room opened.
    again = await api.post(f"/api/sessions/{sid}/sellers", json=SELLERS[0])
    assert again.status_code == 409
    assert "configuration is fixed" in again.json()["error"]


async def test_bad_bodies_list_every_problem_with_its_path_and_write_nothing(
    api: httpx.AsyncClient,
) -> None:
    sid = ok(await api.post("/api/sessions", json={"description": "bad input"}), 201)["session_id"]
    bad_seller = {
        "handle": "not a handle",
        "style": "grumpy",
        "priorities": {"customer_retention": 0.5, "profit_maximization": 0.6},
        "inventory": [
            {"item_name": "USB-C cable", "cost_price": 6, "selling_price": 9.5, "least_price": 5.5}
        ],
    }
    refused = await api.post(f"/api/sessions/{sid}/sellers", json=bad_seller)
    assert refused.status_code == 422, refused.text
    paths = {p["path"] for p in refused.json()["problems"]}
    assert {
        "handle",
        "style",
        "priorities.profit_maximization",
        "inventory[0].least_price",
    } <= paths
    # A body missing its weights still gets every other problem too, in one answer.
    no_weights = {k: v for k, v in bad_seller.items() if k != "priorities"}
    refused = await api.post(f"/api/sessions/{sid}/sellers", json=no_weights)
    paths = {p["path"] for p in refused.json()["problems"]}
    assert {"priorities", "handle", "style", "inventory[0].least_price"} <= paths
    session = ok(await api.get(f"/api/sessions/{sid}"))
    assert session["sellers"] == []  # nothing written

    refused = await api.post(
        f"/api/sessions/{sid}/buyer-config",
        json={"items": [{"item_name": "x", "quantity": 0, "min_price": 9, "max_price": 4}]},
    )
    assert refused.status_code == 422
    paths = {p["path"] for p in refused.json()["problems"]}
    assert {"items[0].quantity", "items[0].max_price"} <= paths

    for body, path in (
        (b"[" * 100_000 + b"]" * 100_000, "$"),  # nested far too deep
        (b"{not json", "$"),
        (b'{"session_id": "nope", "buyer": "robot", "extra": 1}', "session_id"),
    ):
        refused = await api.post(
            "/api/negotiations/start", content=body, headers={"content-type": "application/json"}
        )
        assert refused.status_code == 422, refused.text
        problems = {p["path"] for p in refused.json()["problems"]}
        assert path in problems
    refused = await api.post(
        "/api/negotiations/start", json={"session_id": sid, "buyer": "robot", "extra": 1}
    )
    assert {p["path"] for p in refused.json()["problems"]} == {"buyer", "extra"}

    # Not ready: no buyer items, no sellers; the problems say what is missing.
    not_ready = await api.post("/api/negotiations/start", json={"session_id": sid})
    assert not_ready.status_code == 409
    assert "not ready to negotiate" in not_ready.json()["error"]
    assert not_ready.json()["problems"]

    missing = await api.get("/api/sessions/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert "no session" in missing.json()["error"]
    missing = await api.post(
        "/api/negotiations/00000000-0000-0000-0000-000000000000/message", json={"text": "hi"}
    )
    assert missing.status_code == 404
