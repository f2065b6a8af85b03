"""`examples/craigslist/human_flags.py`: flag rates of real people, computed from what
`mams.domain.quality.check` finds in the converted logs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mams.domain.craigslist import SESSION_ID, dialogues_to_events, negotiation_id
from mams.domain.events import QualityFlagged
from mams.domain.quality import check
from tests.e2e.test_cli import base_env, mams_command, one_json_object, schema_dsn

D = Decimal
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "craigslist"
SCRIPT = EXAMPLES / "human_flags.py"
KINDS = {"price_hallucination", "leakage", "constraint", "coherence"}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("human_flags", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


human_flags = load_script()


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def mams_report(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*mams_command(), "report", "--session", str(SESSION_ID), "--json", "--no-plots"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def lines(*numbers: int) -> list[str]:
    """Lines of the bundled file by 0-based index."""
    every = (EXAMPLES / "dialogues-valid.jsonl").read_text(encoding="utf-8").splitlines()
    return [every[n] for n in numbers]


def test_rates_hand_counted_on_three_dialogues() -> None:
    """Dialogues 3, 10 and 41, counted by hand from the file and from check()'s findings.

    3: seller opens "I would like 160", the buyer offers 140, the seller agrees: deal at 140
       (listing 160, target 147); 1 buyer and 2 seller messages; no finding.
    10: 4 buyer and 5 seller messages, no deal (the seller's "$2,00" is unreadable); the
       buyer's "I have $1786 that I can afford" names its target (leakage.buyer_max); the
       seller's "That is over $500 of the listing price" states a difference, not a price
       on the table, so it is no finding.
    41: 4 buyer and 3 seller messages, deal at 120 (listing 200, target 120); "$120 is what
       I can pay and fits my budget" (leakage.buyer_max) countered after the seller's odd
       "40 dollars" (coherence.counter_above_offer).
    """
    logs = dialogues_to_events(lines(3, 10, 41))
    flags = [check(log) for log in logs]
    assert [sorted(f.rule for f in found) for found in flags] == [
        [],
        ["leakage.buyer_max"],
        ["coherence.counter_above_offer", "leakage.buyer_max"],
    ]
    s = human_flags.summarize(logs, flags, [D(147), D(1786), D(120)])
    assert (s["buyer_messages"], s["seller_messages"], s["messages"]) == (9, 10, 19)
    # counters 140, 1786, 120; offers 160, 140 (the seller's yes), 40, 120
    assert (s["buyer_counters"], s["seller_offers"]) == (3, 4)
    assert (s["deals"], s["deal_rate"]) == (2, 0.6667)
    assert s["mean_deal_over_listing"] == 0.7375  # (140/160 + 120/200) / 2
    assert s["mean_deal_over_target"] == 0.9762  # (140/147 + 120/120) / 2
    assert (s["flags"], s["flags_per_100"]) == (3, 15.79)  # 3 / 19
    assert (s["dialogues_flagged"], s["share_flagged"]) == (2, 0.6667)
    assert s["by_kind"] == {
        "price_hallucination": {"flags": 0, "per_100": 0.0, "dialogues": 0},
        "leakage": {"flags": 2, "per_100": 10.53, "dialogues": 2},
        "constraint": {"flags": 0, "per_100": 0.0, "dialogues": 0},
        "coherence": {"flags": 1, "per_100": 5.26, "dialogues": 1},
    }
    assert s["by_rule"]["leakage.buyer_max"] == {
        "kind": "leakage",
        "flags": 2,
        "per_100": 10.53,
        "dialogues": 2,
    }
    assert s["by_side"] == {
        "buyer": {"messages": 9, "flags": 3, "per_100": 33.33, "dialogues": 2},
        "seller": {"messages": 10, "flags": 0, "per_100": 0.0, "dialogues": 0},
    }
    assert [(f["dialogue"], f["rule"]) for f in s["findings"]] == [
        (1, f.rule) for f in flags[1]
    ] + [(2, f.rule) for f in flags[2]]


def test_rates_count_exactly_the_findings_they_are_given() -> None:
    """The same three logs with made-up findings: the figures follow the findings alone."""
    logs = dialogues_to_events(lines(3, 10, 41))

    def flag(i: int, kind: Any, rule: str, agent: str) -> QualityFlagged:
        return QualityFlagged(
            negotiation_id=negotiation_id(i),
            kind=kind,
            rule=rule,
            severity="low",
            agent=agent,
            round=1,
            evidence=(),
            detail="",
        )

    flags = [
        [flag(0, "constraint", "constraint.x", "humanseller")] * 3,
        [],
        [flag(2, "coherence", "coherence.y", "humanbuyer")],
    ]
    s = human_flags.summarize(logs, flags, [D(147), D(1786), D(120)])
    assert (s["flags"], s["dialogues_flagged"]) == (4, 2)
    assert s["by_kind"]["constraint"] == {"flags": 3, "per_100": 15.79, "dialogues": 1}
    assert s["by_kind"]["leakage"] == {"flags": 0, "per_100": 0.0, "dialogues": 0}
    assert s["by_side"]["seller"]["flags"] == 3
    assert s["by_side"]["buyer"]["flags"] == 1
    assert set(s["by_rule"]) == {"constraint.x", "coherence.y"}


def test_json_over_the_bundled_file_is_what_check_finds() -> None:
    proc = run_script("--json")
    assert proc.returncode == 0, proc.stderr
    s = one_json_object(proc.stdout)
    assert (s["dialogues"], s["empty_dialogues"]) == (188, 7)
    assert s["messages"] == s["buyer_messages"] + s["seller_messages"] > 1000
    assert 0 < s["deals"] < 188
    assert set(s["by_kind"]) == KINDS
    assert s["flags"] == len(s["findings"])
    assert s["flags"] == sum(k["flags"] for k in s["by_kind"].values())
    assert s["flags"] == sum(r["flags"] for r in s["by_rule"].values())
    assert s["flags"] == sum(r["flags"] for r in s["by_side"].values())
    assert s["flags_per_100"] == round(100 * D(s["flags"]) / s["messages"], 2)
    assert s["by_kind"]["constraint"]["flags"] == 0  # every human action is valid
    # The findings are check()'s, dialogue by dialogue.
    logs = dialogues_to_events(lines(*range(188)))
    expected = Counter((i, f.rule) for i, log in enumerate(logs) for f in check(log))
    assert Counter((f["dialogue"], f["rule"]) for f in s["findings"]) == expected
    assert s["dialogues_flagged"] == len({i for i, _ in expected})
    for f in s["findings"]:
        assert f["negotiation_id"] == str(negotiation_id(f["dialogue"]))


def test_tables_on_the_terminal() -> None:
    proc = run_script()
    assert proc.returncode == 0, proc.stderr
    for words in ("By kind", "By rule", "price_hallucination", "dialogues (empty)", "188 (7)"):
        assert words in proc.stdout


@pytest.mark.e2e
async def test_store_then_mams_report_sees_the_same_people(
    database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path / "data")
    env["DATABASE_URL"] = schema_dsn(database_url, pg_schema)
    first = run_script("--store", "--json", env=env)
    assert first.returncode == 0, first.stderr
    again = run_script("--store", "--json", env=env)  # idempotent
    assert again.returncode == 0, again.stderr
    assert "0 events written" in again.stderr
    mine = one_json_object(first.stdout)
    report = mams_report(env, tmp_path)
    assert report.returncode == 0, report.stderr
    body = one_json_object(report.stdout)
    overall = body["overall"]
    assert (body["negotiations"], body["skipped"]) == (188, 0)
    assert (overall["rooms"], overall["deals"], overall["flags"]) == (
        188,
        mine["deals"],
        mine["flags"],
    )
    assert [row["key"] for row in body["by_buyer_model"]] == ["human"]
    assert [row["key"] for row in body["by_seller_style"]] == ["human"]
    unknown = run_script("--store", env={**env, "DATABASE_URL": ""})
    assert unknown.returncode == 2
