"""`mams bench-models` as a subprocess against the test's schema and the real NATS."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.e2e.test_cli import Cli, cli

__all__ = ["cli"]
pytestmark = pytest.mark.e2e


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows without their session ids (new sessions on every run)."""
    return [{k: v for k, v in r.items() if k != "session_id"} for r in report["rows"]]


async def test_baseline_leaderboard_is_reproducible_by_seed_with_the_human_row(
    cli: Cli,
) -> None:
    args = ("bench-models", "--model", "baseline", "--rooms", "4", "--seed", "3")
    first = cli.json(*args)
    assert first["benchset"]["version"] == 1
    assert first["benchset"]["rooms"] == 4
    assert first["agents"] == "buyer"
    [row] = first["rows"]
    assert row["model"] == "baseline"
    assert row["rooms"] == 4
    assert 0 <= row["deals"] <= 4
    assert row["cost_usd"] == 0
    assert row["messages"] > 0
    human = first["human"]
    assert (human["label"], human["rooms"], human["deals"]) == (
        "human (CraigslistBargain)",
        188,
        100,
    )
    assert human["cost_per_deal_usd"] is None

    # The rooms are in the log, in a session of their own, with the set's sellers.
    conn = await asyncpg.connect(cli.database_url, server_settings={"search_path": cli.schema})
    try:
        runs = await conn.fetch(
            "SELECT status, brain, sellers FROM negotiation_runs WHERE session_id = $1",
            __import__("uuid").UUID(row["session_id"]),
        )
    finally:
        await conn.close()
    assert len(runs) == 4
    assert {r["status"] for r in runs} == {"completed"}

    again = cli.json(*args)
    assert _rows(again) == _rows(first)
    assert again["rows"][0]["session_id"] != row["session_id"]

    # Text output: the table and where to look further.
    proc = cli("bench-models", "--model", "baseline", "--rooms", "2", "--no-human")
    assert proc.returncode == 0, proc.stderr
    assert "leaderboard" in proc.stdout
    assert "mams report --session" in proc.stdout


def test_bad_input_exits_2_before_anything_runs(cli: Cli) -> None:
    proc = cli("bench-models", "--model", "nosuch:model", "--json")
    assert proc.returncode == 2
    assert "--model 'nosuch:model'" in proc.stdout
    proc = cli("bench-models", "--model", "baseline", "--rooms", "0")
    assert proc.returncode == 2
    assert "--rooms must be between 1 and" in proc.stderr
    proc = cli("bench-models", "--model", "baseline", "--data", str(cli.cwd))
    assert proc.returncode == 2
    assert "listings.jsonl" in proc.stderr
