"""`mams bench-models` with an LLM model: the real anthropic SDK in the `mams` process
talking to the loopback fake (tests/llm/fakes.py) driven by the scripted Negotiator."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.e2e.test_cli import Cli, cli, one_json_object
from tests.llm.fakes import FakeAnthropic
from tests.llm.negotiator import BUYER, Negotiator

__all__ = ["cli"]
pytestmark = pytest.mark.e2e

MODEL = "anthropic:claude-sonnet-5"


@pytest.fixture
def fake(cli: Cli) -> Iterator[tuple[FakeAnthropic, Negotiator]]:
    """The fake model server, and the CLI's environment pointed at it (and nothing else)."""
    for var in list(cli.env):
        if var.startswith(("ANTHROPIC_", "OPENAI_", "OPENROUTER_")):
            del cli.env[var]
    with FakeAnthropic() as server:
        negotiator = Negotiator()
        server.handler = negotiator
        cli.env["ANTHROPIC_API_KEY"] = "test-key"
        cli.env["ANTHROPIC_BASE_URL"] = server.url
        yield server, negotiator


def test_an_llm_buyer_against_baseline_sellers(
    cli: Cli, fake: tuple[FakeAnthropic, Negotiator]
) -> None:
    _, negotiator = fake
    proc = cli("bench-models", "--model", MODEL, "--rooms", "2", "--no-human", "--json")
    assert proc.returncode == 0, proc.stderr
    report = one_json_object(proc.stdout)
    [row] = report["rows"]
    assert row["model"] == MODEL
    assert row["rooms"] == 2
    assert report["human"] is None
    # Only the buyer asked the model: the sellers are baseline.
    assert negotiator.turns
    assert {t.agent for t in negotiator.turns} == {BUYER}
    # The scripted buyer accepts a standing offer within its max, so some room deals, and
    # the fake's usage is priced.
    assert row["deals"] >= 1
    assert row["cost_usd"] > 0
    expected = (row["cost_usd"] / row["deals"]).quantize(Decimal("0.000001"))
    assert abs(row["cost_per_deal_usd"] - expected) <= Decimal("0.000001")


def test_every_agent_on_the_model_and_a_missing_key(
    cli: Cli, fake: tuple[FakeAnthropic, Negotiator]
) -> None:
    _, negotiator = fake
    proc = cli(
        "bench-models", "--model", MODEL, "--agents", "all", "--rooms", "2", "--no-human", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert {t.agent for t in negotiator.turns} - {BUYER}, "sellers asked the model too"

    del cli.env["ANTHROPIC_API_KEY"]
    before = len(negotiator.turns)
    proc = cli("bench-models", "--model", "baseline", "--model", MODEL, "--rooms", "1")
    assert proc.returncode == 2
    assert "ANTHROPIC_API_KEY" in proc.stderr
    assert len(negotiator.turns) == before
    assert "running baseline" not in proc.stdout  # nothing ran before the check
