"""`mams analyze` as a subprocess over the known log in the test's own schema."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mams.actors.brains.llm.models import DEFAULT_MODELS
from mams.domain.events import AnalystReviewed, QualityFlagged, decode_event, observation_stream_id
from mams.domain.quality import check
from mams.storage.observations import load_observations
from tests.analysis import logs
from tests.analysis.conftest import KnownLog
from tests.e2e.test_cli import base_env, flat, mams_command, one_json_object, schema_dsn
from tests.llm.fakes import FakeAnthropic, anthropic_text, anthropic_tool_use

pytestmark = pytest.mark.e2e
D = Decimal
# The top-level keys cmd/analyze.py's docstring documents.
DOCUMENTED_KEYS = {
    "negotiation_id", "session_id", "item_name", "status", "outcome", "rounds", "max_rounds",
    "buyer_quantity", "buyer_min_price", "buyer_max_price", "messages", "buyer_messages",
    "seller_messages", "latency_measured", "agents", "llm", "sellers", "buyer_counters", "deal",
    "surplus", "efficiency", "guardrails_by_model", "flags_by_kind", "flags", "review", "analyst",
}  # fmt: skip
LLM_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENROUTER_API_KEY",
    "MAMS_ANALYST_MODEL",
)


def run_mams(
    *args: str, log: KnownLog, database_url: str, tmp_path: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in base_env(tmp_path / "data").items() if k not in LLM_VARS}
    env["DATABASE_URL"] = schema_dsn(database_url, log.schema)
    env.update(extra)
    return subprocess.run(
        [*mams_command(), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def expected_flags(log: KnownLog, nid: Any) -> list[QualityFlagged]:
    """The hand flags stored for the room plus what the grounded checks find in its log."""
    events = [decode_event(r.data) for r in await log.store.read(nid)]
    return list(dict.fromkeys([*logs.FLAGS[nid], *check(events)]))


async def test_analyze_json_and_text_without_an_analyst(
    known_log: KnownLog, database_url: str, tmp_path: Path
) -> None:
    def mams(*args: str) -> subprocess.CompletedProcess[str]:
        return run_mams(*args, log=known_log, database_url=database_url, tmp_path=tmp_path)

    proc = mams("analyze", str(logs.ROOM_A), "--json")
    assert proc.returncode == 0, proc.stderr
    a = one_json_object(proc.stdout)
    assert set(a) == DOCUMENTED_KEYS
    assert (a["outcome"], a["rounds"], a["messages"], a["buyer_messages"]) == ("deal", 3, 7, 3)
    assert a["deal"]["unit_price"] == D("7.5")
    assert a["deal"]["saving_vs_first_ask_pct"] == D("6.25")
    assert (a["surplus"]["seller_share"], a["surplus"]["buyer_share"]) == (D("0.4444"), D("0.5556"))
    assert a["efficiency"]["took_cheapest"] is False
    assert a["efficiency"]["cheapest_sellers"] == ["tech"]
    assert a["guardrails_by_model"] == {logs.GPT: 1}
    assert a["llm"]["calls"] == 3
    assert a["latency_measured"] is True
    assert all(g["latency_ms_mean"] is not None for g in a["agents"])  # all answered once
    flags = await expected_flags(known_log, logs.ROOM_A)
    assert len(a["flags"]) == len(flags)
    assert sum(a["flags_by_kind"].values()) == len(flags)
    assert a["review"] is None
    assert a["analyst"]["status"] == "off"
    # The checks' findings are now recorded in the companion stream, once each.
    stored = [o for o in await load_observations(known_log.store, logs.ROOM_A)]
    assert set(stored) == set(flags)
    assert len(stored) == len(flags)

    proc = mams("analyze", str(logs.ROOM_B))
    assert proc.returncode == 0, proc.stderr
    text = flat(proc.stdout)
    assert "no_deal" in text
    assert "empty" in text
    assert "computed metrics only" in text
    assert "@Beta" in text

    # Bad input exits 2 with the fix named.
    proc = mams("analyze", "ffffffff")
    assert proc.returncode == 2
    assert "mams negotiations" in proc.stderr
    proc = mams("analyze", str(observation_stream_id(logs.ROOM_A)))
    assert proc.returncode == 2
    assert "not a negotiation" in proc.stderr


async def test_analyze_asks_the_analyst_once_and_reuses_its_review(
    known_log: KnownLog, database_url: str, tmp_path: Path
) -> None:
    with FakeAnthropic() as fake:
        fake.queue(anthropic_tool_use("submit_review", {"review": "The buyer overpaid @Quick."}))

        def mams(*args: str) -> subprocess.CompletedProcess[str]:
            return run_mams(
                *args,
                log=known_log,
                database_url=database_url,
                tmp_path=tmp_path,
                ANTHROPIC_API_KEY="test-key",
                ANTHROPIC_BASE_URL=fake.url,
            )

        first = mams("analyze", str(logs.ROOM_A), "--json")
        assert first.returncode == 0, first.stderr
        body = one_json_object(first.stdout)
        assert body["review"]["text"] == "The buyer overpaid @Quick."
        assert body["analyst"]["status"] == "new"
        # The second run reuses the stored review: the fake has no reply left to give.
        second = mams("analyze", str(logs.ROOM_A))
        assert second.returncode == 0, second.stderr
        assert "The buyer overpaid @Quick." in second.stdout
        assert "reused" in flat(second.stdout)
        assert len(fake.requests) == 1
        # Naming another model asks it (its review is kept beside the first one).
        fake.queue(anthropic_tool_use("submit_review", {"review": "Second opinion."}))
        other = mams("analyze", str(logs.ROOM_A), "--analyst-model", "anthropic:claude-other")
        assert other.returncode == 0, other.stderr
        assert "Second opinion." in other.stdout
        assert len(fake.requests) == 2
        # An analyst that answers without a review: the metrics stand, and it says so.
        fake.queue(anthropic_text(""))
        failed = mams("analyze", str(logs.ROOM_B), "--json")
        assert failed.returncode == 0, failed.stderr
        body = one_json_object(failed.stdout)
        assert body["review"] is None
        assert body["analyst"]["status"] == "failed"
        assert "computed metrics only" in body["analyst"]["note"]
        assert body["outcome"] == "no_deal"
    reviews = [
        o
        for o in await load_observations(known_log.store, logs.ROOM_A)
        if isinstance(o, AnalystReviewed)
    ]
    assert [r.model for r in reviews] == [
        f"anthropic:{DEFAULT_MODELS['anthropic']}",
        "anthropic:claude-other",
    ]
    assert reviews[0].call is not None
