"""The cost of the system around the model, with LLM brains and an instant model.

Usage: python bench/llm_market.py [--runs 5] [--nats URL] [--dsn DSN]

Runs the phone-accessories market with every agent on "anthropic:claude-sonnet-5",
served by a loopback Anthropic-API server that answers instantly with a scripted
negotiator, over the real NATS and PostgreSQL (NATS_URL / DATABASE_URL, defaults to
127.0.0.1). Prints, per negotiation: LLM calls, prompt and completion tokens (estimated
from the bytes actually sent and received, ~4 characters per token, since the fake's
usage figures are made up), and the orchestration time per LLM call: wall time of the
room (opened to ended) divided by the calls on its critical path (rounds x 2: the
buyer's call, then the
sellers' parallel calls), which is everything but the model. Printed beside the seed's
estimate (~20 calls, ~20,000 tokens per negotiation). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mams.actors.market import RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.domain.config import load_scenario
from mams.domain.events import Event, LLMCalled, NegotiationEnded, decode_event
from mams.domain.negotiation import NegotiationState
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session
from tests.llm.fakes import FakeAnthropic, Reply, anthropic_tool_use

ROOT = Path(__file__).resolve().parent.parent


def _text(body: dict[str, Any]) -> tuple[str, str]:
    system = body["system"][0]["text"] if isinstance(body["system"], list) else body["system"]
    user = body["messages"][-1]["content"]
    return system, user if isinstance(user, str) else user[0]["text"]


def negotiator(body: dict[str, Any]) -> Reply:
    """A scripted, instant model: sellers concede toward their floor, the buyer counters
    twice and then takes the best standing offer."""
    tool = body["tool_choice"]["name"]
    system, user = _text(body)
    if tool == "seller_reply":
        ask = float(re.search(r"asking price is \$([\d.,]+)", system).group(1))  # type: ignore[union-attr]
        floor = float(re.search(r"price\) is \$([\d.,]+)", system).group(1))  # type: ignore[union-attr]
        step = user.count("[round")
        price = max(floor, round(ask - (ask - floor) * 0.3 * step, 2))
        return anthropic_tool_use(
            tool,
            {
                "reasoning": "concede a little each round",
                "text": f"I can do ${price:.2f} per unit.",
                "offer_unit_price": price,
            },
        )
    offers = re.findall(r"- (@\w+): \$([\d.]+) x (\d+)", user)
    round_ = int(re.search(r"round (\d+) of", user).group(1))  # type: ignore[union-attr]
    if not offers:
        return anthropic_tool_use(
            tool,
            {
                "reasoning": "ask everyone",
                "action": "message",
                "to": [],
                "text": "What is your best unit price?",
            },
        )
    handle, price, qty = min(offers, key=lambda o: float(o[1]))
    if round_ >= 3:
        return anthropic_tool_use(
            tool,
            {
                "reasoning": "best offer is good enough",
                "action": "accept",
                "seller": handle,
                "unit_price": float(price),
                "quantity": int(qty),
                "text": "Deal.",
            },
        )
    return anthropic_tool_use(
        tool,
        {
            "reasoning": "push for less",
            "action": "counter",
            "to": [],
            "unit_price": round(float(price) * 0.85, 2),
            "text": "Can you do better?",
        },
    )


async def one_run(nats_url: str, dsn: str, schema: str) -> list[dict[str, float]]:
    pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
    scenario = load_scenario(ROOT / "examples" / "phone-accessories.toml")
    session_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await save_session(conn, session_id, scenario)

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=name)

    opened: dict[uuid.UUID, float] = {}
    ended: dict[uuid.UUID, float] = {}

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        opened.setdefault(nid, time.perf_counter())
        if isinstance(event, NegotiationEnded):
            ended[nid] = time.perf_counter()

    rooms = await run_market(
        scenario,
        session_id,
        scenario.buyer.items,
        connect=connect,
        store=store,
        options=RunOptions(seed=1, round_timeout=30),
        on_event=on_event,
    )
    out = []
    for room in rooms:
        events = [decode_event(e.data) for e in await store.read(room.negotiation_id)]
        calls = [e.call for e in events if isinstance(e, LLMCalled)]
        prompt_chars = sum(len(c.request) for c in calls)
        completion_chars = sum(len(c.tool_input) + len(c.text) for c in calls)
        out.append(
            {
                "calls": len(calls),
                "rounds": room.state.round,
                "prompt_tokens": prompt_chars / 4,
                "completion_tokens": completion_chars / 4,
                "http_ms": statistics.mean(c.latency_ms for c in calls) if calls else 0.0,
                "per_call_ms": (ended[room.negotiation_id] - opened[room.negotiation_id])
                * 1000
                / max(1, 2 * room.state.round),
            }
        )
    await pool.close()
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows: list[dict[str, float]] = []
    with FakeAnthropic() as fake:
        fake.handler = negotiator
        os.environ.update(ANTHROPIC_API_KEY="bench", ANTHROPIC_BASE_URL=fake.url)
        for _ in range(args.runs):
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = await asyncpg.connect(args.dsn)
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            try:
                rows += await one_run(args.nats, args.dsn, schema)
            finally:
                await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
                await admin.close()

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    print(f"{len(rows)} negotiations, every agent an LLM brain on an instant loopback model")
    print(f"  LLM calls per negotiation        {mean('calls'):8.1f}   (seed estimate ~20)")
    tokens = mean("prompt_tokens") + mean("completion_tokens")
    print(
        f"  tokens per negotiation (est.)    {tokens:8,.0f}   (seed estimate ~20,000)"
        f"  = {mean('prompt_tokens'):,.0f} prompt + {mean('completion_tokens'):,.0f} completion"
    )
    print(f"  rounds per negotiation           {mean('rounds'):8.1f}")
    print(f"  SDK + HTTP per call (mean)       {mean('http_ms'):8.2f} ms")
    print(
        f"  orchestration per critical call  {mean('per_call_ms'):8.2f} ms   "
        "(room open to end / (2 x rounds): bus, log, guardrails, prompts, SDK, fake)"
    )


if __name__ == "__main__":
    anyio.run(main)
