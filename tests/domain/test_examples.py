"""The example scenarios parse, and the generated one is exactly what its script builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mams.domain.config import load_scenario

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BUILD = EXAMPLES / "craigslist" / "build_scenario.py"
GENERATED = EXAMPLES / "craigslist-market.toml"
SCENARIOS = sorted(EXAMPLES.glob("*.toml"))

# Runs the build script under an audit hook that records every file it opens.
AUDITED = """
import json, runpy, sys
opened = []
sys.addaudithook(
    lambda event, args: opened.append(str(args[0])) if event == "open" else None
)
script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    sys.stderr.write("OPENED " + json.dumps(opened) + "\\n")
"""


def test_there_are_examples() -> None:
    names = {p.name for p in SCENARIOS}
    assert {"phone-accessories.toml", "craigslist-market.toml"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.buyer.items
    for item in scenario.buyer.items:
        assert 1 <= len(scenario.sellers_of(item.item_name)) <= 10


def test_phone_accessories_is_the_classic_case() -> None:
    scenario = load_scenario(EXAMPLES / "phone-accessories.toml")
    case = scenario.buyer_item("iPhone 15 case")
    cable = scenario.buyer_item("USB-C cable")
    assert (case.quantity, str(case.min_price), str(case.max_price)) == (2, "8.00", "14.00")
    assert (cable.quantity, str(cable.min_price), str(cable.max_price)) == (3, "4.00", "9.00")
    by_handle = {s.handle: s for s in scenario.sellers}
    assert list(by_handle) == ["@TechMart", "@GadgetHub", "@QuickTech", "@CableKing"]
    assert (
        by_handle["@TechMart"].style,
        str(by_handle["@TechMart"].customer_retention_weight),
    ) == (
        "rude",
        "0.2",
    )
    assert by_handle["@QuickTech"].style == "sweet"
    assert [e.item_name for e in by_handle["@CableKing"].inventory] == ["USB-C cable"]
    # Negotiation matters: someone asks above the buyer's max for each item.
    for item in (case, cable):
        asks = [s.stock(item.item_name) for s in scenario.sellers_of(item.item_name)]
        assert any(a is not None and a.selling_price > item.max_price for a in asks)


def run_build(*args: str, cwd: Path) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-I", "-c", AUDITED, str(BUILD), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = [x for x in done.stderr.splitlines() if x.startswith("OPENED ")]
    opened: list[str] = json.loads(line.removeprefix("OPENED "))
    return done.stdout, opened


def test_generated_scenario_equals_the_script_output_and_reads_only_repo_files(
    tmp_path: Path,
) -> None:
    # From an unrelated directory, so the script cannot rely on the caller's cwd.
    out, opened = run_build("--seed", "2018", "--items", "3", cwd=tmp_path)
    assert out == GENERATED.read_text(encoding="utf-8")
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    outside = [
        p
        for p in opened
        if not p.startswith("/dev/")
        and not any(Path(p).resolve().is_relative_to(pre) for pre in prefixes)
        and not Path(p).resolve().is_relative_to(REPO)
    ]
    assert outside == []
    assert str(EXAMPLES / "craigslist" / "listings.jsonl") in opened
    assert "shared" not in BUILD.read_text(encoding="utf-8")


def test_build_is_deterministic_and_the_seed_matters(tmp_path: Path) -> None:
    first, _ = run_build("--seed", "7", "--items", "4", cwd=tmp_path)
    again, _ = run_build("--seed", "7", "--items", "4", cwd=tmp_path)
    other, _ = run_build("--seed", "8", "--items", "4", cwd=tmp_path)
    assert first == again
    assert first != other
    path = tmp_path / "seven.toml"
    path.write_text(first, encoding="utf-8")
    scenario = load_scenario(path)
    assert len(scenario.buyer.items) == 4
    handles = [s.handle.lower() for s in scenario.sellers]
    assert len(handles) == len(set(handles))
    for item in scenario.buyer.items:
        sellers = scenario.sellers_of(item.item_name)
        assert 3 <= len(sellers) <= 5
        assert item.quantity == 1


def test_craigslist_subset_is_small_and_credited() -> None:
    lines = (EXAMPLES / "craigslist" / "listings.jsonl").read_text(encoding="utf-8").splitlines()
    assert 0 < len(lines) <= 60
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"post_id", "category", "title", "price", "description"}
        assert row["category"] in {"phone", "electronics"}
        assert 20 <= row["price"] <= 500
        assert len(row["description"]) <= 200
    readme = (EXAMPLES / "craigslist" / "README.md").read_text(encoding="utf-8")
    for credit in ("CraigslistBargain", "He", "2018", "stanfordnlp/cocoa", "MIT"):
        assert credit in readme


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "experiments").glob("*.toml")), ids=lambda p: p.name
)
def test_every_example_experiment_validates_with_its_scenarios(path: Path) -> None:
    from mams.experiment import check_spec  # the spec, its scenarios, every arm applied

    spec, rooms = check_spec(path)
    assert len(spec.arms) >= 2
    assert len(rooms) == len(spec.arms) * len(spec.scenarios)
    assert spec.control in {arm.name for arm in spec.arms}
