"""`mams run --processes` with many rooms: a progress bar instead of every message, and
each room graded once it ended, its flags recorded in the log (real OS processes, the
sellers' model a loopback Anthropic server through the real SDK, one seller leaking its
cost in round 1)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from mams.domain.money import fmt
from tests.llm.fakes import FakeAnthropic, Reply
from tests.llm.negotiator import Negotiator, Turn
from tests.processes.helpers import Cast, one_json_object
from tests.processes.test_processes import scenario_file  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e
RUNS = 8  # more rooms than a transcript shows: the progress bar


def _techmart_round_one(turn: Turn) -> bool:
    return not turn.is_buyer and turn.agent == "@TechMart" and turn.round == 1


def _leak(turn: Turn) -> Reply:
    seller = turn.seller()
    args = turn.seller_args()
    args["text"] = f"Honestly, my cost is {fmt(seller.cost)} a unit. {args['text']}"
    return turn.call(args)


async def test_run_processes_grades_every_room_and_records_its_flags(
    procs: Cast,
    scenario_file: Path,  # noqa: F811
    database_url: str,
    pg_schema: str,
) -> None:
    negotiator = Negotiator()
    negotiator.rule(_techmart_round_one, _leak, times=None)
    with FakeAnthropic() as fake:
        fake.handler = negotiator
        procs.env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=fake.url)
        run = procs.mams(
            "run", "run", str(scenario_file), "--processes", "--json", "--runs", str(RUNS),
            "--seller-model", "anthropic:claude-sonnet-5", "--buyer-model", "baseline",
        )  # fmt: skip
        assert await run.wait() == 0, run.describe()
    doc = one_json_object(run.out())
    negotiations = doc["negotiations"]
    assert len(negotiations) == RUNS
    assert {n["status"] for n in negotiations} == {"completed"}
    leaked = [n["flags"].get("leakage", 0) for n in negotiations]
    assert all(count >= 1 for count in leaked), leaked  # every room: TechMart's round 1
    said = run.err()
    assert "@TechMart:" not in said  # no message by message with a progress bar
    assert "[buyer] opened" in said
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:
        recorded = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'quality.flagged'")
    finally:
        await conn.close()
    assert recorded == sum(sum(n["flags"].values()) for n in negotiations)
