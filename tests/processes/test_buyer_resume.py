"""A `mams buyer` process killed mid-negotiation, started again with `--resume`, takes its
open room back and decides from the conversation it had (real OS processes, real NATS and
PostgreSQL, the buyer's model a loopback Anthropic server through the real SDK).

The buyer's round-2 model call is held, and the process is SIGKILLed while it waits.
`mams buyer --resume` says hello, is welcomed with the open room, and gets the room's view,
the recap of round 1 and its turn. The prompt it sends the model for round 2 is the
one the killed process sent, word for word: the same conversation, offers and counters.
The room then ends as usual, and the resumed buyer prints its outcome.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest

from tests.faults.test_broker_crash import poll
from tests.llm.fakes import FakeAnthropic
from tests.llm.negotiator import Negotiator, Turn
from tests.processes.helpers import Cast, last_json_line
from tests.processes.test_processes import (  # noqa: F401 (scenario_file: a fixture)
    BASELINE,
    scenario_file,
    start_market,
)

pytestmark = pytest.mark.e2e

MODEL = ("--model", "anthropic:claude-sonnet-5")


def _round_two(turn: Turn) -> bool:
    return turn.is_buyer and turn.round == 2 and not turn.correcting


async def test_a_killed_buyer_resumes_its_room_from_the_same_conversation(
    procs: Cast,
    market: str,
    scenario_file: Path,  # noqa: F811
) -> None:
    negotiator = Negotiator()
    # The first round-2 call waits (the process dies meanwhile); later ones are answered.
    negotiator.rule(_round_two, lambda t: replace(t.policy(), delay=120.0), times=1)
    with FakeAnthropic() as fake:
        fake.handler = negotiator
        procs.env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=fake.url)
        await start_market(procs, market, scenario_file, seller_args=BASELINE)
        first = procs.buyer(scenario_file, market, *MODEL)
        await poll(lambda: any(_round_two(t) for t in negotiator.of("buyer")), within=60)
        first.signal(signal.SIGKILL)
        await first.wait(within=10)

        resumed = procs.buyer(scenario_file, market, *MODEL, "--resume", "--json", name="again")
        assert await resumed.wait() == 0, resumed.describe()
    assert "resuming 1 open room(s)" in resumed.err()  # --json: people read stderr
    doc = last_json_line(resumed.out())
    assert [n["status"] for n in doc["negotiations"]] == ["completed"]
    asked = [t for t in negotiator.of("buyer") if _round_two(t)]
    assert len(asked) == 2  # the killed process's call, and the resumed one's
    assert asked[1].view == asked[0].view  # the same conversation, word for word
    assert "[round 1] You:" in asked[1].view  # its own round-1 words are in it


async def test_resume_with_no_open_room_says_so_and_exits_0(
    procs: Cast,
    market: str,
    scenario_file: Path,  # noqa: F811
) -> None:
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")
    buyer = procs.buyer(scenario_file, market, *BASELINE, "--resume")
    assert await buyer.wait() == 0, buyer.describe()
    assert "nothing to resume" in buyer.out()
