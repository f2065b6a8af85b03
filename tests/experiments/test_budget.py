"""A budget stops an experiment cleanly: once the model calls' estimated cost reaches it, no
new rooms open; the rooms open finish (completed, none aborted), and `--resume` goes on.

LLM brains against the loopback Anthropic fake (the real SDK, configured from the
environment as `mams experiment` is), scripted by the tests' Negotiator; real NATS and
PostgreSQL.
"""

from __future__ import annotations

import io
import os
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from mams.actors.brains.llm import providers
from mams.domain.experiment import parse_spec
from mams.experiment import arm_scenarios, execute, load_scenarios, store_experiment
from mams.infra import Servers
from mams.storage.readmodels import run_states
from tests.experiments.test_validity import srv
from tests.llm.fakes import FakeAnthropic
from tests.llm.negotiator import Negotiator
from tests.llm.test_llm_market import ANTHROPIC, MARKET

__all__ = ["srv"]  # the fixture, used by name


@pytest.fixture
def fake_anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    for var in list(os.environ):
        if var.startswith(("ANTHROPIC_", "OPENAI_", "OPENROUTER_", "MAMS_")):
            monkeypatch.delenv(var)
    monkeypatch.setattr(providers, "_LIMITERS", {})
    with FakeAnthropic() as fake:
        fake.handler = Negotiator()
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        yield fake


async def test_a_budget_stops_opening_rooms_and_lets_open_ones_finish(
    srv: Servers, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    (tmp_path / "market.toml").write_text(MARKET, encoding="utf-8")
    text = f"""
name = "budget"
control = "a"
scenarios = ["market.toml"]
seeds = 1
repeats = 6
rooms_at_once = 2
[[arms]]
name = "a"
buyer_model = "{ANTHROPIC}"
seller_model = "baseline"
"""
    spec = parse_spec(tomllib.loads(text))
    cast = arm_scenarios(spec, load_scenarios(spec, tmp_path, "spec"), "spec")
    async with srv.pool.acquire() as conn:
        sessions = await store_experiment(conn, uuid.uuid4(), spec, cast)
    [(session_id, _)] = sessions.values()
    out = Console(file=io.StringIO())
    # A budget below one room's cost: the first batch (2 rooms at once) runs, no other.
    tally = await execute(srv, spec, sessions, out, budget_usd=1e-9, llm=True)
    assert tally.stopped_by_budget
    assert tally.usage.calls > 0
    assert tally.usage.cost_usd is not None
    assert tally.usage.cost_usd > 0
    async with srv.pool.acquire() as conn:
        rooms = await run_states(conn, session_id, ("completed", "running", "aborted"))
    assert Counter(r.status for r in rooms) == {"completed": 2}  # the batch open finished
    assert {r.seed for r in rooms} == {1, 2}
    assert tally.completed == 2

    # Without a budget, the rest.
    rest = await execute(srv, spec, sessions, out, llm=True)
    assert not rest.stopped_by_budget
    assert rest.completed == rest.planned == 6
    assert rest.ran == 4
