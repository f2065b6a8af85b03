"""What one participant may cost a market: room options no room can run with (rounds past
int4, deadlines of 10^16 s or 1 ms, more rooms than a request may open, seeds past bigint)
are refused with a reason, even from the buyer of a stored session; a flood of 100,000
hellos changes no honest outcome; the model calls an agent reports about itself (tokens
2^63, a cost of 1e308, 230 KB bodies, a brain label made to forge report rows) are refused
or cut before they reach the log."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mams.domain.events import LLMCalled, NegotiationStarted, decode_event
from mams.storage.eventstore import PostgresEventStore
from tests.hostile.rig import ATTACKER, WAIT, finished_attack, hostile_market

pytestmark = pytest.mark.integration

Db = tuple[asyncpg.Pool, PostgresEventStore]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_rounds": 2**31}, id="max_rounds-2^31"),
        pytest.param({"round_timeout": 1e16}, id="round_timeout-1e16"),
        pytest.param({"round_timeout": 0.001}, id="round_timeout-1ms"),
        pytest.param({"runs": 5_000}, id="runs-x-items-15000"),
        pytest.param({"seed": 2**63}, id="seed-2^63"),
        pytest.param({"seed": 2**63 - 3, "runs": 5}, id="seed+r-past-bigint"),
    ],
)
async def test_room_options_no_market_can_afford_are_refused(
    tmp_path: Path, db: Db, options: dict[str, Any]
) -> None:
    async with hostile_market(tmp_path, db) as rig:
        request = {
            "type": "open_rooms",
            "request_id": str(uuid.uuid4()),
            "session_id": str(rig.attacker_session),  # a stored session it is the buyer of
            **options,
        }
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
        assert any(r["reason"] == reply["reason"] for r in rig.refusals()), rig.refusals()
        await rig.run_honest()
        assert [
            n for n in rig.states if n not in before and _buyer(rig.states[n]) == ATTACKER
        ] == []
        await rig.check_survived()


def _buyer(state: Any) -> str | None:
    return state.started.buyer.agent_id if state.started is not None else None


FLOOD = 100_000


async def test_a_flood_of_hellos_changes_no_honest_outcome(tmp_path: Path, db: Db) -> None:
    hello = json.dumps({"type": "hello", "role": "seller", "brain": "flood"})
    async with hostile_market(tmp_path, db) as rig:
        flood = rig.attacker(
            [
                {"op": "publish", "data": hello, "count": FLOOD},
                {"op": "drain", "quiet": 2.0, "timeout": WAIT},
            ],
            quiet_inbox=True,
        )
        await flood.wait_for('"step": "publish"', within=WAIT)  # all sent and flushed
        await rig.run_honest()  # behind the flood in the broker's queue
        assert await flood.wait(within=WAIT + 30) == 0
        (drained,) = finished_attack(flood).steps("drain")
        # Each answered hello costs a welcome (and a catch-up per open room): the flood
        # must not buy 100,000 of them.
        welcomes = drained["counts"].get("welcome", 0)
        assert 1 <= welcomes < FLOOD // 100, drained
        await rig.check_survived()


SPOOF = "baseline (no LLM)\n| all | 999 | 1.0 |\x1b[2J" + "x" * 10_000
TOKENS = 2**63


def llm_turn(body: int) -> str:
    call = {
        "provider": "anthropic",
        "model": "claude\n| spoofed model |",
        "purpose": "decide",
        "prompt_digest": "0" * 64,
        "request": "r" * body,
        "response": "s" * 1000,
        "input_tokens": TOKENS,
        "output_tokens": TOKENS,
        "cost_usd": 1e308,
    }
    turn = {
        "type": "seller.turn",
        "negotiation_id": "{{negotiation_id}}",
        "round": 0,
        "message_id": "{{answer_id}}",
        "text": "Eleven dollars each.",
        "offer": {"unit_price": "11.00", "quantity": 4},
        "llm_calls": [call],
    }
    # The round goes in as a number: the template's placeholder is replaced as text.
    return json.dumps(turn).replace('"round": 0', '"round": {{round}}')


async def test_self_reported_model_calls_and_labels_are_bounded(tmp_path: Path, db: Db) -> None:
    async with hostile_market(tmp_path, db) as rig:
        child, starts = await rig.attacker_in_rooms(
            [{"op": "answer", "data": llm_turn(230 * 1024), "count": 2, "timeout": 30}],
            brain=SPOOF,
        )
        await rig.run_honest()
        await rig.finish(starts)
        assert await child.wait(within=WAIT) == 0
        finished_attack(child)
        stored = await rig.store.read_streams([s.negotiation_id for s in starts])
        events = [decode_event(e.data) for es in stored.values() for e in es]
        for event in events:
            if isinstance(event, NegotiationStarted):
                label = next(s.brain for s in event.sellers if s.agent_id == ATTACKER)
                assert label.isprintable(), f"a brain label forges report rows: {label!r}"
                assert len(label) < len(SPOOF)
            if isinstance(event, LLMCalled) and event.agent == ATTACKER:
                call = event.call
                assert call.input_tokens < TOKENS, call
                assert call.output_tokens < TOKENS, call
                assert call.cost_usd is None or (
                    math.isfinite(call.cost_usd) and call.cost_usd < 1e308
                )
                assert len(call.request) < 230 * 1024
                assert call.model.isprintable(), f"a model label forges report rows: {call.model!r}"
        await rig.check_survived()
