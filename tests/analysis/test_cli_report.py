"""`mams report` as a subprocess: over the known log (figures equal the hand-computed ones)
and over a real market run with baseline brains (figures agree with the read models)."""

from __future__ import annotations

import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.analysis import logs
from tests.analysis.conftest import KnownLog
from tests.analysis.test_cli_analyze import expected_flags, run_mams
from tests.audit.conftest import Market
from tests.e2e.test_cli import flat, one_json_object

pytestmark = pytest.mark.e2e
D = Decimal
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """A real PNG: the signature, an IHDR chunk first, and a nonzero width and height."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR", path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 0
    assert height > 0
    assert len(data) > 1000  # a drawn figure, not an empty canvas


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


async def test_report_over_the_known_log(
    known_log: KnownLog, database_url: str, tmp_path: Path
) -> None:
    def mams(*args: str) -> subprocess.CompletedProcess[str]:
        return run_mams(*args, log=known_log, database_url=database_url, tmp_path=tmp_path)

    plots = tmp_path / "plots"
    proc = mams("report", "--session", str(logs.SESSION), "--json", "--plots", str(plots))
    assert proc.returncode == 0, proc.stderr
    r = one_json_object(proc.stdout)
    assert set(r) == {
        "session_id", "negotiations", "skipped", "overall", "by_buyer_model", "by_seller_model",
        "by_seller_style", "rooms", "plots",
    }  # fmt: skip
    assert (r["session_id"], r["negotiations"], r["skipped"]) == (str(logs.SESSION), 3, 1)
    o = r["overall"]
    assert (o["rooms"], o["deals"], o["deal_rate"]) == (3, 1, D("0.3333"))
    assert (o["mean_saving_pct"], o["mean_saving_vs_max_pct"]) == (D("6.25"), D("16.67"))
    assert (o["mean_seller_share"], o["mean_buyer_share"]) == (D("0.4444"), D("0.5556"))
    assert (o["messages"], o["guardrails"]) == (14, 1)
    # Flags: the hand ones stored in the log plus whatever the grounded checks find now.
    found = {
        nid: await expected_flags(known_log, nid) for nid in (logs.ROOM_A, logs.ROOM_B, logs.ROOM_C)
    }
    total = sum(len(f) for f in found.values())
    assert o["flags"] == total
    assert o["flags_per_100"] == D(str(round(total / 14 * 100, 2)))

    buyers = by_key(r["by_buyer_model"])
    assert set(buyers) == {logs.CLAUDE, logs.BASE}
    claude = buyers[logs.CLAUDE]
    assert (claude["rooms"], claude["deals"], claude["deal_rate"], claude["messages"]) == (
        2, 1, D("0.5"), 4
    )  # fmt: skip
    claude_flags = sum(
        1 for nid in (logs.ROOM_A, logs.ROOM_C) for f in found[nid] if f.agent == "buyer"
    )
    assert claude["flags"] == claude_flags
    sellers = by_key(r["by_seller_model"])
    gpt = sellers[logs.GPT]
    assert (gpt["rooms"], gpt["deals"], gpt["mean_seller_share"], gpt["guardrails"]) == (
        3, 1, D("0.4444"), 1
    )  # fmt: skip
    assert (sellers[logs.BASE]["rooms"], sellers[logs.BASE]["deals"]) == (3, 0)
    styles = by_key(r["by_seller_style"])
    assert {k: (v["rooms"], v["deals"]) for k, v in styles.items()} == {
        "sweet": (2, 1), "rude": (3, 0), "neutral": (1, 0)
    }  # fmt: skip
    assert [room["negotiation_id"] for room in r["rooms"]] == [
        str(logs.ROOM_A), str(logs.ROOM_B), str(logs.ROOM_C)
    ]  # fmt: skip
    assert r["rooms"][0]["unit_price"] == D("7.50")

    names = sorted(Path(p).name for p in r["plots"])
    assert names == ["by_model.png", "by_style.png", "trajectories.png"]
    for p in r["plots"]:
        assert_png(Path(p))

    # Human output: the tables and where the plots went; the default directory.
    proc = mams("report")
    assert proc.returncode == 0, proc.stderr
    text = flat(proc.stdout)
    assert "By seller style" in text
    assert "sweet" in text
    assert "3 negotiations; 1 aborted or unfinished skipped" in text
    default = tmp_path / "mams-report"
    assert "plot: mams-report/by_model.png" in text
    for name in names:
        assert_png(default / name)

    # Bad input exits 2 and names the fix.
    proc = mams("report", "--session", "nope")
    assert proc.returncode == 2
    assert "mams sessions" in proc.stderr
    proc = mams("report", "--session", str(uuid.uuid4()))
    assert proc.returncode == 2
    assert "no session" in proc.stderr
    (tmp_path / "afile").write_text("x")
    proc = mams("report", "--plots", "afile")
    assert proc.returncode == 2
    assert "is a file" in proc.stderr
    proc = mams("report", "--jobs", "0")
    assert proc.returncode == 2
    assert "--jobs must be at least 1" in proc.stderr


async def test_report_and_analyze_over_a_real_run_agree_with_the_read_models(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    # The audit tests' fixture: the phone scenario run with baseline brains, seed 7.
    log, rooms = KnownLog(market.pool, market.store, pg_schema), market.rooms

    def mams(*args: str) -> subprocess.CompletedProcess[str]:
        return run_mams(*args, log=log, database_url=database_url, tmp_path=tmp_path)

    proc = mams("report", "--json", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    r = one_json_object(proc.stdout)
    assert r["plots"] == []
    outcomes = {
        str(row["negotiation_id"]): row
        for row in await log.pool.fetch("SELECT negotiation_id, type, unit_price FROM outcomes")
    }
    assert r["negotiations"] == len(rooms) == len(outcomes)
    deals = sum(1 for row in outcomes.values() if row["type"] == "deal")
    assert r["overall"]["deals"] == deals
    assert r["by_buyer_model"][0]["key"] == "baseline (no LLM)"
    for room in r["rooms"]:
        assert room["outcome"] == outcomes[room["negotiation_id"]]["type"]
        assert room["unit_price"] == outcomes[room["negotiation_id"]]["unit_price"]
    messages = await log.pool.fetchval("SELECT count(*) FROM messages")
    assert r["overall"]["messages"] == messages

    nid = rooms[0].negotiation_id
    proc = mams("analyze", str(nid)[:8], "--json")
    assert proc.returncode == 0, proc.stderr
    a = one_json_object(proc.stdout)
    assert a["negotiation_id"] == str(nid)
    assert a["latency_measured"] is True
    answered = [g for g in a["agents"] if g["latency_ms_mean"] is not None]
    assert answered  # at least the buyer answered its first round
    assert all(g["latency_ms_max"] >= g["latency_ms_mean"] >= 0 for g in answered)
